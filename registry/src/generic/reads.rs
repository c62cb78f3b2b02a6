//! Reads: one object, a page of a list (selectors, continue tokens, the
//! watch cache's lists at `resourceVersion=0`), and storage events as a
//! watch sends them.

use super::*;

/// Options of a list (and of a watch's initial state).
#[derive(Debug, Default)]
pub struct ListOptions {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Page size; 0 for all.
    pub limit: usize,
    /// Continue token from the previous page.
    pub continue_token: Option<String>,
    /// `resourceVersionMatch=Exact`: read at this revision.
    pub exact_revision: Option<Revision>,
    /// `resourceVersion=N` (not `0`): the list must be at least this new.
    pub not_older_than: Option<Revision>,
    /// `resourceVersion=0`: any revision will do (served from the watch cache).
    pub any_revision: bool,
}

/// One page of a list.
pub struct ListPage {
    /// The objects.
    pub items: Vec<Value>,
    /// The revision the list is consistent at.
    pub revision: Revision,
    /// Token for the next page.
    pub continue_token: Option<String>,
}

/// Keys read from storage at once for a list without a limit.
const LIST_PAGE: usize = 500;

/// One page of a list, as stored.
pub struct StoredPage {
    /// The objects, as stored (see [`crate::raw`]).
    pub items: Vec<kplex_storage::KeyValue>,
    /// The revision the list is consistent at.
    pub revision: Revision,
    /// Token for the next page.
    pub continue_token: Option<String>,
}

/// A page of the objects the selectors matched, each with its decoded form
/// where matching needed it.
struct Matched {
    items: Vec<(kplex_storage::KeyValue, Option<Value>)>,
    revision: Revision,
    continue_token: Option<String>,
}

/// `kv` if the selectors match it (decoded if they had to look).
fn matching(
    kv: kplex_storage::KeyValue,
    opts: &ListOptions,
) -> Result<Option<(kplex_storage::KeyValue, Option<Value>)>, ApiError> {
    if opts.labels.is_empty() && opts.fields.is_empty() {
        return Ok(Some((kv, None)));
    }
    let object = object_of(&kv)?;
    Ok(
        (opts.labels.matches(&object["metadata"]["labels"]) && opts.fields.matches(&object))
            .then_some((kv, Some(object))),
    )
}

/// How long a watch or list from a revision the server has not reached
/// yet waits for it (kube-apiserver's watch cache waits 3 s, then answers
/// 504).
const FUTURE_REVISION_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Returns once the watch cache has reached `revision`, or 504 if it does not
/// within [`FUTURE_REVISION_WAIT`].
pub async fn wait_for_revision(cache: &WatchCache, revision: Revision) -> Result<(), ApiError> {
    let current = cache.current_revision().await.map_err(from_store)?;
    if revision <= current
        || tokio::time::timeout(FUTURE_REVISION_WAIT, cache.caught_up(revision))
            .await
            .is_ok()
    {
        return Ok(());
    }
    Err(ApiError::too_large_resource_version(
        revision,
        Some(current.get()),
    ))
}

/// A storage event as a watch with these selectors sends it (type and
/// object), or `None` if the selectors exclude it. An object that stops
/// matching is reported as DELETED.
pub fn watch_event(
    event: &kplex_storage::Event,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(&'static str, Value)> {
    let matches = |o: &Value| labels.matches(&o["metadata"]["labels"]) && fields.matches(o);
    match event {
        kplex_storage::Event::Put { kv, prev } => {
            let object = object_of(kv).ok()?;
            let before = prev.as_ref().and_then(|p| object_of(p).ok());
            let was = before.as_ref().is_some_and(matches);
            match (was, matches(&object)) {
                (_, true) if before.is_none() || !was => Some(("ADDED", object)),
                (true, true) => Some(("MODIFIED", object)),
                (true, false) => Some(("DELETED", object)),
                _ => None,
            }
        }
        kplex_storage::Event::Delete { prev, revision } => {
            let mut object = object_of(prev).ok()?;
            if !matches(&object) {
                return None;
            }
            object["metadata"]["resourceVersion"] = json!(revision.to_string());
            Some(("DELETED", object))
        }
    }
}

/// [`watch_event`], leaving the object as stored where no selector needs
/// to look into it.
pub fn watch_event_stored(
    event: &kplex_storage::Event,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(&'static str, crate::raw::Object)> {
    use crate::raw::Object;
    if !labels.is_empty() || !fields.is_empty() {
        return watch_event(event, labels, fields).map(|(kind, o)| (kind, Object::Decoded(o)));
    }
    match event {
        kplex_storage::Event::Put { kv, prev } => Some((
            if prev.is_some() { "MODIFIED" } else { "ADDED" },
            Object::Stored(kv.clone()),
        )),
        // A deletion carries the revision of the delete.
        kplex_storage::Event::Delete { prev, revision } => Some((
            "DELETED",
            Object::Stored(kplex_storage::KeyValue {
                mod_revision: *revision,
                ..prev.clone()
            }),
        )),
    }
}

/// A continue token for a list read at `revision` that goes on after the
/// object `name` (in `ns`), stored or not: a page that ends on an object
/// the server adds to a list (a VC's default roles) continues after it.
pub fn continue_after(revision: Revision, ns: Option<&str>, name: &str) -> String {
    let token = json!({"rv": revision.get(), "ns": ns, "name": name});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

/// The name a continue token goes on after (`None`: not a token this
/// server made; the list refuses it).
pub fn continued_after(token: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let value: Value = serde_json::from_slice(&raw).ok()?;
    value["name"].as_str().map(str::to_owned)
}

/// Decodes a stored value as the watch sends it.
pub fn decode_watched(kv: &kplex_storage::KeyValue) -> Result<Value, ApiError> {
    object_of(kv)
}

impl GenericStore {
    /// One object.
    pub async fn get(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        name: &str,
    ) -> Result<Value, ApiError> {
        crate::meta::validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
        match self
            .store
            .get(&self.key(info, ns, name)?)
            .await
            .map_err(from_store)?
        {
            Some(kv) => served(info, &kv),
            None => Err(Self::not_found(info, name)),
        }
    }

    /// One object as stored (see [`crate::raw`]).
    pub async fn get_stored(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        name: &str,
    ) -> Result<kplex_storage::KeyValue, ApiError> {
        crate::meta::validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
        self.store
            .get(&self.key(info, ns, name)?)
            .await
            .map_err(from_store)?
            .ok_or_else(|| Self::not_found(info, name))
    }

    /// A page of objects (`ns` None: across namespaces).
    pub async fn list(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        opts: &ListOptions,
    ) -> Result<ListPage, ApiError> {
        let page = self.list_matching(info, ns, opts).await?;
        Ok(ListPage {
            items: page
                .items
                .into_iter()
                .map(|(kv, object)| match object {
                    Some(mut object) => {
                        info.as_served(&mut object);
                        Ok(object)
                    }
                    None => served(info, &kv),
                })
                .collect::<Result<_, _>>()?,
            revision: page.revision,
            continue_token: page.continue_token,
        })
    }

    /// A page of objects as stored (see [`crate::raw`]): what a list
    /// answers without decoding them (only selectors decode).
    pub async fn list_stored(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        opts: &ListOptions,
    ) -> Result<StoredPage, ApiError> {
        let page = self.list_matching(info, ns, opts).await?;
        Ok(StoredPage {
            items: page.items.into_iter().map(|(kv, _)| kv).collect(),
            revision: page.revision,
            continue_token: page.continue_token,
        })
    }

    /// The objects the selectors match, each with its decoded form if the
    /// match needed one.
    async fn list_matching(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        opts: &ListOptions,
    ) -> Result<Matched, ApiError> {
        let prefix = self.prefix(info, ns)?;
        let (mut after, mut revision) = (None, opts.exact_revision);
        if let Some(min) = opts.not_older_than {
            // As for a watch: a revision the cache has not reached yet is
            // waited for a moment before the 504.
            wait_for_revision(&self.store, min).await?;
        }
        if let Some(token) = &opts.continue_token {
            let (rev, key) = self.decode_continue(info, token)?;
            after = Some(key);
            revision = Some(rev);
        } else if revision.is_none() && (opts.any_revision || opts.not_older_than.is_some()) {
            if let Some((kvs, revision)) = self.store.list(&prefix, opts.not_older_than).await {
                return self.page_from_cache(kvs, revision, opts);
            }
        }
        // A consistent list (as kube-apiserver's from its watch cache):
        // from memory when the cache holds the prefix and has applied every
        // write acknowledged before the list began — known without a round
        // trip only where storage is this process's (embedded).
        let consistent = revision.is_none() && opts.continue_token.is_none();
        let current = consistent.then(|| self.store.local_revision()).flatten();
        if let Some(current) = current {
            if let Some((kvs, revision)) = self.store.cached_list(&prefix, current) {
                return self.page_from_cache(kvs, revision, opts);
            }
        }
        let mut items = Vec::new();
        loop {
            // Selectors filter after the read, so read in pages until the
            // caller's page is full or the range ends.
            let want = if opts.limit == 0 {
                // In pages: a small list is one page read like a GET; a
                // large one reads on at the first page's revision.
                Some(LIST_PAGE)
            } else {
                Some(opts.limit - items.len())
            };
            let page = self
                .store
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    after: after.clone(),
                    limit: want,
                    revision,
                })
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } if opts.continue_token.is_some() => ApiError {
                        code: http::StatusCode::GONE,
                        reason: "Expired",
                        message: "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                        details: None,
                    },
                    StoreError::Compacted { requested } => ApiError {
                        code: http::StatusCode::GONE,
                        reason: "Expired",
                        message: format!("too old resource version: {requested}"),
                        details: None,
                    },
                    StoreError::FutureRevision { requested } => {
                        ApiError::too_large_resource_version(requested, None)
                    }
                    e => from_store(e),
                })?;
            // The whole of a small prefix, read at one revision: the cache
            // may keep it for the next consistent list.
            if current.is_some() && after.is_none() && !page.more {
                self.store.adopt(&prefix, &page.kvs, page.revision);
            }
            revision = Some(page.revision);
            after = page.kvs.last().map(|kv| kv.key.clone());
            for kv in page.kvs {
                if let Some(object) = matching(kv, opts)? {
                    items.push(object);
                }
            }
            let full = opts.limit != 0 && items.len() >= opts.limit;
            if !page.more || full {
                let revision = page.revision;
                let continue_token = match (&after, page.more) {
                    (Some(last), true) => Some(self.encode_continue(revision, last)),
                    _ => None,
                };
                return Ok(Matched {
                    items,
                    revision,
                    continue_token,
                });
            }
        }
    }

    fn encode_continue(&self, revision: Revision, last: &Key) -> String {
        let parts = TenantKeyspace::parse(last);
        continue_after(
            revision,
            parts.as_ref().and_then(|p| p.namespace),
            parts.as_ref().map_or("", |p| p.name),
        )
    }

    /// A continue token names a position by namespace and name only; the key
    /// is rebuilt through this VC's keyspace, so a forged token can never
    /// point outside it.
    fn decode_continue(
        &self,
        info: &ResourceInfo,
        token: &str,
    ) -> Result<(Revision, Key), ApiError> {
        let bad = || ApiError::bad_request("continue key is not valid");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad())?;
        let value: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
        let rev = value["rv"].as_u64().ok_or_else(bad)?;
        let name = value["name"].as_str().ok_or_else(bad)?;
        let ns = value["ns"].as_str();
        if ns.is_some() != info.namespaced {
            return Err(bad());
        }
        let key = self
            .keyspace
            .object_key(&info.group, &info.plural, ns, name)
            .map_err(|_| bad())?;
        Ok((Revision::new(rev), key))
    }

    /// One page of a list served by the watch cache; later pages (if
    /// `limit` cuts it) continue from storage at the same revision.
    fn page_from_cache(
        &self,
        kvs: Vec<kplex_storage::KeyValue>,
        revision: Revision,
        opts: &ListOptions,
    ) -> Result<Matched, ApiError> {
        let mut items = Vec::new();
        let mut continue_token = None;
        let total = kvs.len();
        for (i, kv) in kvs.into_iter().enumerate() {
            let key = kv.key.clone();
            if let Some(object) = matching(kv, opts)? {
                items.push(object);
            }
            if opts.limit != 0 && items.len() >= opts.limit {
                if i + 1 < total {
                    continue_token = Some(self.encode_continue(revision, &key));
                }
                break;
            }
        }
        Ok(Matched {
            items,
            revision,
            continue_token,
        })
    }

    /// The prefix a watch of `info` in `ns` covers.
    pub fn watch_prefix(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
    ) -> Result<KeyPrefix, ApiError> {
        self.prefix(info, ns)
    }
}
