//! How the controllers reach kplex: over HTTPS with a system credential,
//! like any client. Reads are cross-VC watches (`/clusters/*/…`, one per
//! resource type for every VC); writes go to the object's own VC
//! (`/clusters/<vc>/…`). Nothing here is per VC: one connection pool for
//! the watches, one for the writes.

use std::fmt::Debug;
use std::sync::Arc;

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::Request;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// A virtual cluster, as the controllers know it: from the annotations of
/// the objects the cross-VC watches deliver. Equal and hashed by UID (a
/// recreated VC of the same name is another VC).
#[derive(Clone, Debug)]
pub struct Vc {
    /// The VC's UID.
    pub uid: Arc<str>,
    /// The VC's name (its URL segment).
    pub name: Arc<str>,
}

impl PartialEq for Vc {
    fn eq(&self, other: &Vc) -> bool {
        self.uid == other.uid
    }
}

impl Eq for Vc {}

impl std::hash::Hash for Vc {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.uid.hash(state);
    }
}

impl PartialOrd for Vc {
    fn partial_cmp(&self, other: &Vc) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Vc {
    fn cmp(&self, other: &Vc) -> std::cmp::Ordering {
        self.uid.cmp(&other.uid)
    }
}

/// The clients of one controllers process.
#[derive(Clone)]
pub struct Clients {
    /// Based at `<server>/clusters/*`: `Api::all` on it lists and watches
    /// one resource across every VC.
    pub across: kube::Client,
    /// Based at the server's root: writes build their own
    /// `/clusters/<vc>/…` paths.
    pub root: kube::Client,
    /// Based at the system cluster (`/system`): `Api::all` on it reads the
    /// admin records a system component may (the VCs).
    pub system_cluster: kube::Client,
    /// What the clients were made of, for the clients of one VC (see
    /// [`Clients::in_vc`]).
    config: kube::Config,
}

impl Clients {
    /// Clients for `config` (a system credential, server at kplex's root).
    pub fn new(config: &kube::Config) -> Result<Clients, Error> {
        let mut across = config.clone();
        across.cluster_url = with_path(&config.cluster_url, "/clusters/*")?;
        let mut system_cluster = config.clone();
        system_cluster.cluster_url =
            with_path(&config.cluster_url, kplex_api::names::SYSTEM_CLUSTER_PATH)?;
        Ok(Clients {
            system_cluster: kube::Client::try_from(system_cluster).map_err(Error::client)?,
            across: kube::Client::try_from(across).map_err(Error::client)?,
            root: kube::Client::try_from(config.clone()).map_err(Error::client)?,
            config: config.clone(),
        })
    }

    /// A client based at `vc` (`/clusters/<vc>`): `Api::all` on it lists
    /// and watches a resource of that VC alone (its custom resources, which
    /// no cross-VC watch serves).
    pub fn in_vc(&self, vc: &Vc) -> Result<kube::Client, Error> {
        let mut config = self.config.clone();
        config.cluster_url =
            with_path(&self.config.cluster_url, &format!("/clusters/{}", vc.name))?;
        kube::Client::try_from(config).map_err(Error::client)
    }

    /// The API of kind `K` in namespace `ns` (or cluster-scoped) of `vc`.
    pub fn vc<K>(&self, vc: &Vc, ns: Option<&str>) -> VcApi<K>
    where
        K: Resource<DynamicType = ()>,
    {
        VcApi {
            client: self.root.clone(),
            request: Request::new(format!("/clusters/{}{}", vc.name, K::url_path(&(), ns))),
            _kind: std::marker::PhantomData,
        }
    }

    /// The API of kind `K` in namespace `ns` of the system cluster.
    pub fn system<K>(&self, ns: Option<&str>) -> VcApi<K>
    where
        K: Resource<DynamicType = ()>,
    {
        VcApi {
            client: self.root.clone(),
            request: Request::new(format!(
                "{}{}",
                kplex_api::names::SYSTEM_CLUSTER_PATH,
                K::url_path(&(), ns)
            )),
            _kind: std::marker::PhantomData,
        }
    }
}

fn with_path(url: &http::Uri, path: &str) -> Result<http::Uri, Error> {
    let base = url.to_string();
    format!("{}{path}", base.trim_end_matches('/'))
        .parse()
        .map_err(|e: http::uri::InvalidUri| Error::Config(e.to_string()))
}

/// Writes and reads of one kind in one namespace of one VC.
pub struct VcApi<K> {
    client: kube::Client,
    request: Request,
    _kind: std::marker::PhantomData<fn() -> K>,
}

/// The field manager every controller write names (as kube-controller-manager's).
pub const MANAGER: &str = "kube-controller-manager";

impl<K> VcApi<K>
where
    K: Clone + DeserializeOwned + Serialize + Debug,
{
    fn post_params() -> PostParams {
        PostParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        }
    }

    /// One object; `None` if it does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>, Error> {
        let req = self
            .request
            .get(name, &Default::default())
            .map_err(Error::request)?;
        match self.client.request::<K>(req).await {
            Ok(o) => Ok(Some(o)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(Error::Api(e)),
        }
    }

    /// Creates `object`.
    pub async fn create(&self, object: &K) -> Result<K, Error> {
        let body = serde_json::to_vec(object).map_err(Error::json)?;
        let req = self
            .request
            .create(&Self::post_params(), body)
            .map_err(Error::request)?;
        self.client.request(req).await.map_err(Error::Api)
    }

    /// Replaces `name` with `object` (its resourceVersion guards the write).
    pub async fn replace(&self, name: &str, object: &K) -> Result<K, Error> {
        let body = serde_json::to_vec(object).map_err(Error::json)?;
        let req = self
            .request
            .replace(name, &Self::post_params(), body)
            .map_err(Error::request)?;
        self.client.request(req).await.map_err(Error::Api)
    }

    /// Replaces `name`'s status with `object`'s.
    pub async fn replace_status(&self, name: &str, object: &K) -> Result<K, Error> {
        let body = serde_json::to_vec(object).map_err(Error::json)?;
        let req = self
            .request
            .replace_subresource("status", name, &Self::post_params(), body)
            .map_err(Error::request)?;
        self.client.request(req).await.map_err(Error::Api)
    }

    /// Posts `body` to subresource `sub` of `name` (a Pod's `binding`, a
    /// ServiceAccount's `token`); the answer.
    pub async fn create_subresource(
        &self,
        sub: &str,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let data = serde_json::to_vec(body).map_err(Error::json)?;
        let req = self
            .request
            .create_subresource(sub, name, &Self::post_params(), data)
            .map_err(Error::request)?;
        self.client.request(req).await.map_err(Error::Api)
    }

    /// Puts `body` to subresource `sub` of `name`; the object written.
    pub async fn put_subresource(
        &self,
        sub: &str,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<K, Error> {
        let data = serde_json::to_vec(body).map_err(Error::json)?;
        let req = self
            .request
            .replace_subresource(sub, name, &Self::post_params(), data)
            .map_err(Error::request)?;
        self.client.request(req).await.map_err(Error::Api)
    }

    /// A merge patch of `name`.
    pub async fn merge(&self, name: &str, patch: &serde_json::Value) -> Result<K, Error> {
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        let req = self
            .request
            .patch(name, &params, &Patch::Merge(patch))
            .map_err(Error::request)?;
        self.client.request(req).await.map_err(Error::Api)
    }

    /// Deletes `name` (propagation `policy`, guarded by `uid` if given);
    /// one already gone is not an error.
    pub async fn delete(
        &self,
        name: &str,
        policy: Propagation,
        uid: Option<&str>,
    ) -> Result<(), Error> {
        let mut params = match policy {
            Propagation::Background => DeleteParams::background(),
            Propagation::Foreground => DeleteParams::foreground(),
            Propagation::Orphan => DeleteParams::orphan(),
        };
        if let Some(uid) = uid {
            params.preconditions = Some(kube::api::Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            });
        }
        let req = self.request.delete(name, &params).map_err(Error::request)?;
        match self.client.request_text(req).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            // The precondition failed: another object of that name now.
            Err(e) if uid.is_some() && is_status(&e, 409) => Ok(()),
            Err(e) => Err(Error::Api(e)),
        }
    }

    /// Every object (of this namespace, or of the VC).
    pub async fn list(&self) -> Result<Vec<K>, Error> {
        let req = self
            .request
            .list(&Default::default())
            .map_err(Error::request)?;
        let list: kube::core::ObjectList<K> = self.client.request(req).await.map_err(Error::Api)?;
        Ok(list.items)
    }
}

/// How a delete treats the object's dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Delete now; the garbage collector deletes dependents after.
    Background,
    /// Dependents first (those that block), then the object.
    Foreground,
    /// Keep dependents, without their reference to the object.
    Orphan,
}

/// Whether `e` is an API answer with this HTTP code.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}
