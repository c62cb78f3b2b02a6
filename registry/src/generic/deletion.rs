//! Deletion: the options a delete carries (propagation, preconditions,
//! grace), finalizers, and a namespace's termination — its objects go,
//! then it does.

use super::*;

/// Options of a delete (query parameters and the `DeleteOptions` body).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `dryRun=All`: check, delete nothing.
    pub dry_run: bool,
    /// `preconditions.uid`: delete only the object with this UID.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`: delete only this version.
    pub resource_version: Option<String>,
    /// `propagationPolicy` (or the deprecated `orphanDependents`): what
    /// happens to the object's dependents; `None` for the kind's default.
    pub propagation: Option<Propagation>,
}

/// What a delete does to the object's dependents (the garbage collector
/// acts on it; see `kplex-controllers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// The object goes now; its dependents after it.
    Background,
    /// The object stays, marked with the `foregroundDeletion` finalizer,
    /// until its blocking dependents are gone.
    Foreground,
    /// The object stays, marked with the `orphan` finalizer, until its
    /// dependents no longer refer to it.
    Orphan,
}

impl Propagation {
    /// Parses a `propagationPolicy`.
    pub fn parse(value: &str) -> Option<Propagation> {
        match value {
            "Background" => Some(Propagation::Background),
            "Foreground" => Some(Propagation::Foreground),
            "Orphan" => Some(Propagation::Orphan),
            _ => None,
        }
    }

    /// The finalizer that holds the object for the garbage collector.
    fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some("foregroundDeletion"),
            Propagation::Orphan => Some("orphan"),
        }
    }
}

/// Checks a delete's `propagationPolicy` and `gracePeriodSeconds` (there is
/// no graceful deletion: a valid grace period changes nothing).
pub fn check_delete_parameters(
    propagation: Option<&str>,
    grace_seconds: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(p) = propagation.filter(|p| !p.is_empty()) {
        if !matches!(p, "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::field(
                "DeleteOptions.meta.k8s.io",
                "",
                "propagationPolicy",
                &format!("Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""),
            ));
        }
    }
    if let Some(g) = grace_seconds.filter(|g| g.parse::<i64>().is_err()) {
        return Err(ApiError::bad_request(format!(
            "gracePeriodSeconds: invalid value {g:?}: must be an integer"
        )));
    }
    Ok(())
}

impl DeleteOptions {
    /// Reads a `DeleteOptions` body (if any) on top of the query's `dryRun`.
    pub fn from_body(body: Option<&Value>, dry_run: bool) -> Result<DeleteOptions, ApiError> {
        let mut opts = DeleteOptions {
            dry_run,
            ..Default::default()
        };
        let Some(body) = body else {
            return Ok(opts);
        };
        let bad =
            |field: &str| ApiError::bad_request(format!("DeleteOptions: {field} is malformed"));
        match &body["dryRun"] {
            Value::Null => {}
            Value::Array(modes) if modes.iter().all(|m| m == "All") => {
                opts.dry_run |= !modes.is_empty()
            }
            _ => return Err(bad("dryRun")),
        }
        let grace = match &body["gracePeriodSeconds"] {
            Value::Null => None,
            Value::Number(n) if n.is_i64() => None,
            other => Some(other.to_string()),
        };
        check_delete_parameters(body["propagationPolicy"].as_str(), grace.as_deref())?;
        if !body["propagationPolicy"].is_null() && !body["propagationPolicy"].is_string() {
            return Err(bad("propagationPolicy"));
        }
        let preconditions = &body["preconditions"];
        let text = |field: &str| match &preconditions[field] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(bad(&format!("preconditions.{field}"))),
        };
        opts.uid = text("uid")?;
        opts.resource_version = text("resourceVersion")?;
        opts.propagation = body["propagationPolicy"]
            .as_str()
            .and_then(Propagation::parse);
        if opts.propagation.is_none() {
            opts.propagation = match &body["orphanDependents"] {
                Value::Bool(true) => Some(Propagation::Orphan),
                Value::Bool(false) => Some(Propagation::Background),
                _ => None,
            };
        }
        Ok(opts)
    }

    /// Refuses (409) when the stored object is not the one the preconditions name.
    fn check(
        &self,
        resource: &str,
        name: &str,
        current: &kplex_storage::KeyValue,
        object: &Value,
    ) -> Result<(), ApiError> {
        let failed = |what: &str, wanted: &str, actual: &str| ApiError {
            code: http::StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": Precondition failed: \
                 {what} in precondition: {wanted}, {what} in object meta: {actual}"
            ),
            details: None,
        };
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
        if let Some(wanted) = self.uid.as_deref().filter(|w| *w != uid) {
            return Err(failed("UID", wanted, uid));
        }
        let version = current.mod_revision.to_string();
        if let Some(wanted) = self.resource_version.as_deref().filter(|w| *w != version) {
            return Err(failed("ResourceVersion", wanted, &version));
        }
        Ok(())
    }
}

/// Namespaces kube-apiserver refuses to delete (NamespaceLifecycle).
const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

impl GenericStore {
    /// Deletes an object and returns it. An object with finalizers is only
    /// marked (`deletionTimestamp`); it goes when its last finalizer is
    /// removed. A namespace turns Terminating, its contents are deleted
    /// (honouring their finalizers), and it goes once it is empty.
    pub async fn delete(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        // A write racing the delete (a controller's status, say) is no
        // reason to refuse it, unless the client pinned a version; a failed
        // precondition is final.
        for _ in 0..RACE_RETRIES {
            match self.try_delete(info, ns, name, opts).await {
                Err(e)
                    if e.reason == "Conflict"
                        && !e.message.contains("Precondition failed")
                        && opts.resource_version.is_none() =>
                {
                    continue
                }
                done => return done,
            }
        }
        Err(ApiError::conflict(&info.qualified(), name))
    }

    async fn try_delete(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        crate::meta::validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
        let key = self.key(info, ns, name)?;
        let current = self.current(info, &key, name).await?;
        let object = served(info, &current)?;
        // What follows writes at `current`'s revision: a precondition
        // checked here holds for the write, or the write is a 409.
        opts.check(&info.qualified(), name, &current, &object)?;
        if info.is_namespaces() && IMMORTAL_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        if opts.dry_run || object["metadata"]["deletionTimestamp"].is_string() {
            return Ok(object);
        }
        if info.is_namespaces() {
            return self.terminate_namespace(name, &current, object).await;
        }
        let propagation = opts
            .propagation
            .unwrap_or_else(|| info.strategy.default_propagation());
        if let Some(finalizer) = propagation.finalizer() {
            // The garbage collector finishes the deletion.
            let mut object = object;
            let finalizers = object["metadata"]["finalizers"].as_array_mut();
            match finalizers {
                Some(list) if list.iter().any(|f| f == finalizer) => {}
                Some(list) => list.push(json!(finalizer)),
                None => object["metadata"]["finalizers"] = json!([finalizer]),
            }
            return self.mark_deleted(info, name, &current, object).await;
        }
        if has_finalizers(&object) {
            return self.mark_deleted(info, name, &current, object).await;
        }
        match self.store.delete(&key, current.mod_revision).await {
            Ok(_) => {
                self.after_delete(ns).await?;
                Ok(object)
            }
            Err(StoreError::NotFound { .. }) => Err(Self::not_found(info, name)),
            Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(&info.qualified(), name)),
            Err(e) => Err(from_store(e)),
        }
    }

    /// Sets `deletionTimestamp` on an object that has finalizers.
    async fn mark_deleted(
        &self,
        info: &ResourceInfo,
        name: &str,
        current: &kplex_storage::KeyValue,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        // Outside the VC's limits: a VC at them must still be able to
        // delete (marking adds a few bytes).
        match self
            .store
            .update_unlimited(&current.key, encode_as(info, &object), current.mod_revision)
            .await
        {
            Ok(kv) => {
                object["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                Ok(object)
            }
            Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(&info.qualified(), name)),
            Err(StoreError::NotFound { .. }) => Err(Self::not_found(info, name)),
            Err(e) => Err(from_store(e)),
        }
    }

    async fn terminate_namespace(
        &self,
        name: &str,
        current: &kplex_storage::KeyValue,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let info = self.namespaces();
        object["status"]["phase"] = json!("Terminating");
        let object = self.mark_deleted(info, name, current, object).await?;
        for inner in self.catalog.all().iter().filter(|r| r.namespaced) {
            let range = self
                .store
                .range(RangeRequest::prefix(self.prefix(inner, Some(name))?))
                .await
                .map_err(from_store)?;
            for kv in &range.kvs {
                let item = object_of(kv)?;
                let result = if !has_finalizers(&item) {
                    self.store
                        .delete(&kv.key, kv.mod_revision)
                        .await
                        .map(|_| ())
                } else if item["metadata"]["deletionTimestamp"].is_null() {
                    let mut marked = item.clone();
                    marked["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                    marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    self.store
                        .update_unlimited(&kv.key, encode(&marked), kv.mod_revision)
                        .await
                        .map(|_| ())
                } else {
                    Ok(())
                };
                match result {
                    // Someone else changed or removed it meanwhile; the last
                    // writer's removal finalizes the namespace.
                    Ok(()) | Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(from_store(e)),
                }
            }
        }
        self.finalize_namespace(name).await?;
        Ok(object)
    }

    pub(super) fn namespaces(&self) -> &ResourceInfo {
        self.catalog
            .find("", "v1", "namespaces")
            .expect("namespaces are catalogued")
    }

    /// After an object in `ns` is gone: a Terminating namespace that is now
    /// empty goes too.
    pub(super) async fn after_delete(&self, ns: Namespace<'_>) -> Result<(), ApiError> {
        match ns {
            Some(ns) => self.finalize_namespace(ns).await,
            None => Ok(()),
        }
    }

    async fn finalize_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let key = self.key(self.namespaces(), None, ns)?;
        let Some(current) = self.store.get(&key).await.map_err(from_store)? else {
            return Ok(());
        };
        if object_of(&current)?["status"]["phase"] != "Terminating" {
            return Ok(());
        }
        for inner in self.catalog.all().iter().filter(|r| r.namespaced) {
            if self
                .store
                .count(&self.prefix(inner, Some(ns))?)
                .await
                .map_err(from_store)?
                > 0
            {
                return Ok(());
            }
        }
        match self.store.delete(&key, current.mod_revision).await {
            Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(from_store(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_options_come_from_the_query_and_the_body() {
        let none = DeleteOptions::from_body(None, true).unwrap();
        assert!(none.dry_run && none.uid.is_none() && none.resource_version.is_none());
        let body = json!({"kind": "DeleteOptions", "dryRun": ["All"],
            "preconditions": {"uid": "u-1", "resourceVersion": "7"}});
        let opts = DeleteOptions::from_body(Some(&body), false).unwrap();
        assert!(opts.dry_run);
        assert_eq!(opts.uid.as_deref(), Some("u-1"));
        assert_eq!(opts.resource_version.as_deref(), Some("7"));
        for bad in [
            json!({"dryRun": "All"}),
            json!({"dryRun": ["Everything"]}),
            json!({"preconditions": {"uid": 7}}),
            json!({"gracePeriodSeconds": "soon"}),
        ] {
            let err = DeleteOptions::from_body(Some(&bad), false).unwrap_err();
            assert_eq!(err.code, http::StatusCode::BAD_REQUEST, "{bad}");
        }
        let sideways = json!({"propagationPolicy": "Sideways"});
        let err = DeleteOptions::from_body(Some(&sideways), false).unwrap_err();
        assert_eq!(err.code, http::StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            err.message.contains("Unsupported value: \"Sideways\""),
            "{}",
            err.message
        );
        let kubectls = json!({"propagationPolicy": "Background", "gracePeriodSeconds": 0});
        DeleteOptions::from_body(Some(&kubectls), false).unwrap();
        check_delete_parameters(Some("Foreground"), Some("30")).unwrap();
        assert!(check_delete_parameters(None, Some("abc")).is_err());
    }
}
