//! A kube-rs client against a VC: list, watch, create, patch, delete.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kplex_e2e::{configmap, create_vc, tenant_kubeconfig, Kplex};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};

/// The kube-rs client configuration of a kubeconfig file.
async fn config_of(path: &std::path::Path) -> kube::Config {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_lists_watches_creates_and_patches_in_a_vc() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "team-a");
    create_vc(&kplex, dir.path(), "team-b");
    let path = tenant_kubeconfig(&kplex, dir.path(), "team-a", "alice");
    let client = kube::Client::try_from(config_of(&path).await).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let created = cms
        .create(&PostParams::default(), &configmap("one", "1"))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.resource_version.is_some());

    // A watch from the list's resourceVersion sees the next create, once.
    let list = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let rv = list.metadata.resource_version.clone().unwrap();
    let mut events = cms
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &configmap("two", "2"))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), events.try_next())
        .await
        .expect("no watch event in time")
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Added(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("two")),
        other => panic!("expected Added, got {other:?}"),
    }

    // Merge and strategic patches.
    let merged = cms
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"extra": "x"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.data.unwrap().get("extra").map(String::as_str),
        Some("x")
    );
    let labelled = cms
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Strategic(serde_json::json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        labelled
            .metadata
            .labels
            .unwrap()
            .get("team")
            .map(String::as_str),
        Some("a")
    );
    // A patch may not move an object to another UID or namespace.
    for (patch, code) in [
        (
            serde_json::json!({"metadata": {"uid": "someone-else"}}),
            409,
        ),
        (
            serde_json::json!({"metadata": {"namespace": "kube-system"}}),
            400,
        ),
    ] {
        match cms
            .patch("one", &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, code, "{patch}"),
            other => panic!("{patch}: expected {code}, got {other:?}"),
        }
    }
    // A patch that changes nothing writes nothing: same resourceVersion.
    let unchanged = cms
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({})),
        )
        .await
        .unwrap();
    assert_eq!(
        unchanged.metadata.resource_version,
        labelled.metadata.resource_version
    );
    let selected = cms
        .list(&ListParams::default().labels("team=a"))
        .await
        .unwrap();
    assert_eq!(selected.items.len(), 1);
    // Lists at "any" and "not older than" revisions (informers' first
    // list) are served by the watch cache, and as current as asked.
    let patched_rv = labelled.metadata.resource_version.clone().unwrap();
    let not_older = cms
        .list(
            &ListParams::default()
                .at(&patched_rv)
                .matching(kube::api::VersionMatch::NotOlderThan),
        )
        .await
        .unwrap();
    let names: Vec<_> = not_older
        .items
        .iter()
        .map(|cm| cm.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(
        not_older.items[0].metadata.labels.as_ref().unwrap()["team"],
        "a"
    );
    let paged = cms
        .list(
            &ListParams::default()
                .at(&patched_rv)
                .matching(kube::api::VersionMatch::NotOlderThan)
                .limit(1),
        )
        .await
        .unwrap();
    assert_eq!(paged.items.len(), 1);
    let token = paged.metadata.continue_.clone().expect("a continue token");
    let rest = cms
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items[0].metadata.name.as_deref(), Some("two"));

    // Errors arrive as Kubernetes Status values kube-rs understands.
    match cms.get("missing").await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("expected a 404 Status, got {other:?}"),
    }
    // Deletes honour DeleteOptions: preconditions that name another UID
    // or version are a 409 and delete nothing; dryRun deletes nothing.
    let two = cms.get("two").await.unwrap();
    let (uid, version) = (
        two.metadata.uid.unwrap(),
        two.metadata.resource_version.unwrap(),
    );
    for preconditions in [
        kube::api::Preconditions {
            uid: Some("not-its-uid".into()),
            resource_version: None,
        },
        kube::api::Preconditions {
            uid: None,
            resource_version: Some("1".into()),
        },
    ] {
        let params = DeleteParams {
            preconditions: Some(preconditions),
            ..Default::default()
        };
        match cms.delete("two", &params).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 409);
                assert!(
                    status.message.contains("Precondition failed"),
                    "{}",
                    status.message
                );
            }
            other => panic!("expected 409, got {other:?}"),
        }
    }
    cms.delete("two", &DeleteParams::default().dry_run())
        .await
        .unwrap();
    assert!(cms.get_opt("two").await.unwrap().is_some());
    let exact = kube::api::Preconditions {
        uid: Some(uid),
        resource_version: Some(version),
    };
    cms.delete(
        "two",
        &DeleteParams {
            preconditions: Some(exact),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(cms.get_opt("two").await.unwrap().is_none());

    // A deletion a finalizer defers answers with the object (202), not a
    // Status, so kube-rs reports it pending; it completes with the finalizer.
    let mut held = configmap("held", "x");
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    let pending = cms.delete("held", &DeleteParams::default()).await.unwrap();
    let pending = pending
        .left()
        .expect("a deferred delete returns the object");
    assert!(pending.metadata.deletion_timestamp.is_some());
    let done = cms.delete("one", &DeleteParams::default()).await.unwrap();
    assert!(done.is_right(), "an immediate delete returns a Status");
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("held").await.unwrap().is_none());

    // A watch from a revision the server has not reached is refused after a
    // short wait (504, as kube-apiserver's watch cache), not left hanging.
    // (kube-rs retries 504s by default: ask once.)
    let mut once = config_of(&path).await;
    once.default_retry = false;
    let once: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(once).unwrap(), "default");
    match once.watch(&WatchParams::default(), "99999999").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 504);
            assert!(
                status.message.contains("Too large resource version"),
                "{}",
                status.message
            );
            // The cause client-go's reflector relists on, and when to retry.
            let details = status.details.expect("details");
            assert_eq!(details.causes[0].reason, "ResourceVersionTooLarge");
            assert_eq!(details.retry_after_seconds, 1);
        }
        Err(other) => panic!("expected a 504 Status, got {other:?}"),
        Ok(_) => panic!("expected a 504 Status, got a watch"),
    }

    // So is a list from such a revision, after the same wait.
    match once
        .list(
            &ListParams::default()
                .at("99999999")
                .matching(kube::api::VersionMatch::NotOlderThan),
        )
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 504);
            assert_eq!(
                status.details.unwrap().causes[0].reason,
                "ResourceVersionTooLarge"
            );
        }
        other => panic!("expected a 504 Status, got {other:?}"),
    }

    // The same client cannot reach VC team-b.
    let mut elsewhere = config_of(&path).await;
    elsewhere.cluster_url = format!("{}/clusters/team-b", kplex.server())
        .parse()
        .unwrap();
    let other: Api<ConfigMap> =
        Api::namespaced(kube::Client::try_from(elsewhere).unwrap(), "default");
    match other.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403),
        other => panic!("expected 403 from another VC, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_server_side_apply_yaml_bodies_and_duplicate_fields() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "team-a");
    let path = tenant_kubeconfig(&kplex, dir.path(), "team-a", "alice");
    let client = kube::Client::try_from(config_of(&path).await).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let config = |data: serde_json::Value| {
        Patch::Apply(serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "data": data,
        }))
    };

    // Apply creates, then merges; a key the manager stops applying goes,
    // a key another manager wrote stays.
    let mine = PatchParams::apply("deployer");
    cms.patch(
        "settings",
        &mine,
        &config(serde_json::json!({"a": "1", "b": "2"})),
    )
    .await
    .unwrap();
    cms.patch(
        "settings",
        &PatchParams {
            field_manager: Some("operator".into()),
            ..Default::default()
        },
        &Patch::Merge(serde_json::json!({"data": {"c": "3"}})),
    )
    .await
    .unwrap();
    let applied = cms
        .patch("settings", &mine, &config(serde_json::json!({"a": "1"})))
        .await
        .unwrap();
    assert_eq!(
        applied.data.unwrap(),
        BTreeMap::from([("a".into(), "1".into()), ("c".into(), "3".into())])
    );
    let managers: Vec<(String, String)> = applied
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|e| (e.manager.unwrap(), e.operation.unwrap()))
        .collect();
    assert_eq!(
        managers,
        [
            ("deployer".to_owned(), "Apply".to_owned()),
            ("operator".to_owned(), "Update".to_owned())
        ]
    );

    // Changing a field another manager owns is a 409 with one cause per field.
    match cms
        .patch(
            "settings",
            &mine,
            &config(serde_json::json!({"a": "1", "c": "9"})),
        )
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 409);
            assert_eq!(
                status.message,
                r#"Apply failed with 1 conflict: conflict with "operator" using v1: .data.c"#
            );
            let cause = &status.details.unwrap().causes[0];
            assert_eq!(
                (cause.reason.as_str(), cause.field.as_str()),
                ("FieldManagerConflict", ".data.c")
            );
        }
        other => panic!("expected a 409, got {other:?}"),
    }
    let forced = cms
        .patch(
            "settings",
            &mine.clone().force(),
            &config(serde_json::json!({"a": "1", "c": "9"})),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["c"], "9");

    // Raw requests: an apply without a field manager is refused, whatever
    // its User-Agent (kube-rs and kubectl always send one), and a YAML body
    // creates like JSON.
    let base = "/api/v1/namespaces/default/configmaps";
    let raw = |method: &str, uri: String, media: &str, body: &str| {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", media)
            .header("user-agent", "curl/8.5.0")
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    let apply = raw(
        "PATCH",
        format!("{base}/settings"),
        "application/apply-patch+yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: x}\n",
    );
    match client.request_text(apply).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422);
            assert!(
                status.message.contains("fieldManager: Required value"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 422, got {other:?}"),
    }
    assert_eq!(cms.get("settings").await.unwrap().data.unwrap()["a"], "1");
    let yaml = raw(
        "POST",
        base.to_owned(),
        "application/yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n",
    );
    client.request_text(yaml).await.unwrap();
    assert_eq!(cms.get("from-yaml").await.unwrap().data.unwrap()["k"], "v");
    // A JSON body naming a field twice: refused under Strict (nothing
    // stored), accepted under the default Warn.
    let twice = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "twice"}, "data": {"k": "1", "k": "2"}}"#;
    let strict = raw(
        "POST",
        format!("{base}?fieldValidation=Strict"),
        "application/json",
        twice,
    );
    match client.request_text(strict).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 400);
            assert_eq!(
                status.message,
                r#"strict decoding error: duplicate field "data.k""#
            );
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    assert!(cms.get_opt("twice").await.unwrap().is_none());
    client
        .request_text(raw("POST", base.to_owned(), "application/json", twice))
        .await
        .unwrap();
    assert_eq!(cms.get("twice").await.unwrap().data.unwrap()["k"], "2");
    let broken = raw(
        "POST",
        base.to_owned(),
        "application/yaml",
        "data: [unclosed\n",
    );
    match client.request_text(broken).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 400),
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vc_at_its_watch_limit_gets_429_and_other_vcs_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_with_flags(&dir.path().join("data"), &["--max-watches-per-vc", "2"]);
    create_vc(&kplex, dir.path(), "team-a");
    create_vc(&kplex, dir.path(), "team-b");
    // kube-rs retries 429s by default: ask once.
    let api = |vc: &'static str| {
        let path = tenant_kubeconfig(&kplex, dir.path(), vc, "alice");
        async move {
            let mut config = config_of(&path).await;
            config.default_retry = false;
            let client = kube::Client::try_from(config).unwrap();
            Api::<ConfigMap>::namespaced(client, "default")
        }
    };
    let (a, b) = (api("team-a").await, api("team-b").await);
    let params = WatchParams::default().timeout(60);
    let first = a.watch(&params, "0").await.unwrap().boxed();
    let _second = a.watch(&params, "0").await.unwrap().boxed();
    match a.watch(&params, "0").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 429);
            assert_eq!(status.reason, "TooManyRequests");
            assert_eq!(status.details.unwrap().retry_after_seconds, 1);
        }
        Err(other) => panic!("expected a 429 Status, got {other:?}"),
        Ok(_) => panic!("a third watch was opened past the limit"),
    }
    // Another tenant is not affected.
    let _elsewhere = b.watch(&params, "0").await.unwrap().boxed();
    // A watch that ends frees its slot (the server learns of the closed
    // stream asynchronously: retry until it has, for at most 10 s).
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match a.watch(&params, "0").await {
            Ok(_) => break,
            Err(kube::Error::Api(status)) if status.code == 429 => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
}

/// A list larger than one chunk of the streamed body, from storage and from
/// the watch cache, and a watch's first events: every object whole, each
/// with the resourceVersion a GET of it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_lists_stream_every_object_with_its_resource_version() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "big");
    let path = tenant_kubeconfig(&kplex, dir.path(), "big", "alice");
    let client = kube::Client::try_from(config_of(&path).await).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // ~2 KiB each, with characters JSON must escape: 300 of them are
    // several chunks of the body.
    let value = "\"quoted\" {braces} [brackets] \\ back\nslash é ".repeat(48);
    let mut versions = BTreeMap::new();
    for i in 0..300 {
        let cm = cms
            .create(
                &PostParams::default(),
                &configmap(&format!("cm-{i:03}"), &value),
            )
            .await
            .unwrap();
        versions.insert(cm.metadata.name.unwrap(), cm.metadata.resource_version);
    }
    // An update moves one object's revision after its create.
    let patched = cms
        .patch(
            "cm-007",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    versions.insert("cm-007".into(), patched.metadata.resource_version);

    let check = |items: Vec<ConfigMap>, how: &str| {
        assert_eq!(items.len(), 300, "{how}");
        for cm in items {
            let name = cm.metadata.name.clone().unwrap();
            assert_eq!(
                Some(&cm.metadata.resource_version),
                versions.get(&name),
                "{how}: {name}"
            );
            assert_eq!(cm.data.unwrap()["value"], value, "{how}: {name}");
        }
    };
    check(
        cms.list(&ListParams::default()).await.unwrap().items,
        "consistent list",
    );
    check(
        cms.list(&ListParams::default().match_any())
            .await
            .unwrap()
            .items,
        "list from the watch cache",
    );
    let selected = cms
        .list(&ListParams::default().labels("x=y"))
        .await
        .unwrap()
        .items;
    assert_eq!(selected.len(), 1);
    assert_eq!(selected[0].metadata.resource_version, versions["cm-007"]);

    let mut events = cms
        .watch(&WatchParams::default().timeout(30), "0")
        .await
        .unwrap()
        .boxed();
    let mut added = Vec::new();
    while added.len() < 300 {
        match tokio::time::timeout(Duration::from_secs(20), events.try_next())
            .await
            .expect("no watch event in time")
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(cm) => added.push(cm),
            other => panic!("expected Added, got {other:?}"),
        }
    }
    check(added, "a watch's first events");
    // And a change after them, with its new revision.
    cms.delete("cm-100", &DeleteParams::default())
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(20), events.try_next())
        .await
        .expect("no watch event in time")
        .unwrap()
        .unwrap()
    {
        WatchEvent::Deleted(cm) => {
            assert_eq!(cm.metadata.name.as_deref(), Some("cm-100"));
            let rv: u64 = cm.metadata.resource_version.unwrap().parse().unwrap();
            let before: u64 = versions["cm-100"].as_deref().unwrap().parse().unwrap();
            assert!(rv > before, "a deletion carries its own revision");
        }
        other => panic!("expected Deleted, got {other:?}"),
    }
}

/// Discovery and OpenAPI documents carry an ETag; asked again with it,
/// the server answers 304 Not Modified with no body (client-go revalidates
/// its cached documents so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_openapi_answer_304_to_a_client_that_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "cached");
    let path = tenant_kubeconfig(&kplex, dir.path(), "cached", "alice");
    let client = kube::Client::try_from(config_of(&path).await).unwrap();
    let aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
    for (path, accept) in [
        ("/apis", aggregated),
        ("/api", aggregated),
        ("/apis", "application/json"),
        ("/api/v1", "application/json"),
        ("/apis/apps/v1", "application/json"),
        ("/openapi/v3/apis/apps/v1", "application/json"),
    ] {
        let get = |etag: Option<String>| {
            let mut req = http::Request::get(path).header("accept", accept);
            if let Some(etag) = etag {
                req = req.header("if-none-match", etag);
            }
            client.send(req.body(Vec::new()).unwrap().map(Into::into))
        };
        let first = get(None).await.unwrap();
        assert_eq!(first.status(), 200, "{path}");
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        let again = get(Some(etag.clone())).await.unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"].to_str().unwrap(), etag, "{path}");
        let stale = get(Some("\"stale\"".into())).await.unwrap();
        assert_eq!(stale.status(), 200, "{path}");
    }
    // kubectl's discovery still works with its cache revalidated.
    let kc = path.to_str().unwrap();
    for _ in 0..2 {
        let o = kplex_e2e::kubectl(&["--kubeconfig", kc, "api-resources", "--api-group=apps"]);
        assert!(o.status.success(), "{}", kplex_e2e::stderr(&o));
        assert!(kplex_e2e::stdout(&o).contains("deployments"));
    }
}

/// Metadata informers (client-go's metadata client, kube-rs's
/// `metadata_watcher`) read every kind as `PartialObjectMetadata`: lists,
/// single objects and watch events carry metadata and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_informers_read_every_kind_as_partial_object_metadata() {
    use kube::api::PartialObjectMeta;
    use kube::runtime::watcher;
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "team-a");
    let path = tenant_kubeconfig(&kplex, dir.path(), "team-a", "alice");
    let client = kube::Client::try_from(config_of(&path).await).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &configmap("one", "v"))
        .await
        .unwrap();

    // Lists of several kinds (stored, cluster-scoped, with the VC's
    // default roles among them, empty).
    let accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
    for (collection, expected) in [
        ("/api/v1/namespaces/default/configmaps", Some("one")),
        ("/api/v1/namespaces", Some("default")),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            Some("view"),
        ),
        ("/apis/apps/v1/deployments", None),
        ("/apis/storage.k8s.io/v1/storageclasses", None),
    ] {
        let req = http::Request::get(collection)
            .header("accept", accept)
            .body(Vec::new())
            .unwrap();
        let list: serde_json::Value = client.request(req).await.unwrap();
        assert_eq!(list["kind"], "PartialObjectMetadataList", "{collection}");
        assert_eq!(list["apiVersion"], "meta.k8s.io/v1", "{collection}");
        let items = list["items"].as_array().unwrap();
        for item in items {
            let fields: Vec<&String> = item.as_object().unwrap().keys().collect();
            assert!(
                fields
                    .iter()
                    .all(|f| ["metadata", "kind", "apiVersion"].contains(&f.as_str())),
                "{collection}: {fields:?}"
            );
        }
        let names: Vec<&str> = items
            .iter()
            .filter_map(|i| i["metadata"]["name"].as_str())
            .collect();
        match expected {
            Some(name) => assert!(names.contains(&name), "{collection}: {names:?}"),
            None => assert!(names.is_empty(), "{collection}: {names:?}"),
        }
    }

    // One object, through kube-rs's metadata API.
    let one = cms.get_metadata("one").await.unwrap();
    assert_eq!(one.types.as_ref().unwrap().kind, "PartialObjectMetadata");
    assert_eq!(one.metadata.name.as_deref(), Some("one"));
    let listed = cms.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);

    // A metadata watcher (kube-rs asks for metadata only through an
    // `Api<PartialObjectMeta<_>>`) sees the current objects, then a new one.
    let metas: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client.clone(), "default");
    let mut events = watcher(metas, watcher::Config::default()).boxed();
    let mut created = false;
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.try_next().await.unwrap() {
            match event {
                watcher::Event::InitDone if !created => {
                    created = true;
                    cms.create(&PostParams::default(), &configmap("two", "w"))
                        .await
                        .unwrap();
                }
                watcher::Event::Apply(meta) => return meta,
                _ => {}
            }
        }
        panic!("the metadata watch ended");
    })
    .await
    .expect("the new object's event");
    assert_eq!(seen.metadata.name.as_deref(), Some("two"));
    assert_eq!(seen.types.unwrap().kind, "PartialObjectMetadata");
}
