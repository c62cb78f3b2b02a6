//! `meta.k8s.io/v1` Tables, as kubectl prints them by default: NAME, the
//! kind's columns (its strategy's), AGE, then the `-o wide` columns.

use serde_json::{json, Value};

use crate::resource::ResourceInfo;

/// A Table as kubectl prints it: NAME, the kind's columns, AGE, then the
/// `-o wide` columns.
pub fn render(info: &ResourceInfo, items: &[Value]) -> Value {
    let extra = info.strategy.columns();
    let def = |name: &str, priority: u8, format: &str| json!({"name": name, "type": "string", "format": format, "description": name, "priority": priority});
    if info.strategy.whole_table() {
        let columns: Vec<Value> = extra
            .iter()
            .map(|c| {
                def(
                    &c.name,
                    c.priority,
                    if c.name == "Name" { "name" } else { "" },
                )
            })
            .collect();
        let rows: Vec<Value> = items
            .iter()
            .map(|o| {
                let cells: Vec<Value> = extra.iter().map(|c| (c.cell)(o)).collect();
                json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
            })
            .collect();
        return json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "columnDefinitions": columns, "rows": rows});
    }
    let mut columns = vec![def("Name", 0, "name")];
    columns.extend(
        extra
            .iter()
            .filter(|c| c.priority == 0 && !c.after_age)
            .map(|c| def(&c.name, 0, "")),
    );
    columns.push(def("Age", 0, ""));
    columns.extend(
        extra
            .iter()
            .filter(|c| c.priority == 0 && c.after_age)
            .map(|c| def(&c.name, 0, "")),
    );
    columns.extend(
        extra
            .iter()
            .filter(|c| c.priority > 0)
            .map(|c| def(&c.name, c.priority, "")),
    );
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let meta = &o["metadata"];
            let mut cells = vec![meta["name"].clone()];
            cells.extend(
                extra
                    .iter()
                    .filter(|c| c.priority == 0 && !c.after_age)
                    .map(|c| (c.cell)(o)),
            );
            cells.push(json!(age(meta["creationTimestamp"].as_str().unwrap_or(""))));
            cells.extend(
                extra
                    .iter()
                    .filter(|c| c.priority == 0 && c.after_age)
                    .map(|c| (c.cell)(o)),
            );
            cells.extend(extra.iter().filter(|c| c.priority > 0).map(|c| (c.cell)(o)));
            json!({
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta},
            })
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "columnDefinitions": columns, "rows": rows})
}

/// Ages as kubectl shows them: `45s`, `12m`, `5h`, `3d`.
pub fn age(created: &str) -> String {
    let Ok(t) =
        time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
    else {
        return "<unknown>".into();
    };
    let secs = (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
