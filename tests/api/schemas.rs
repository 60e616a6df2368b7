//! host.json and every function.json validate against the public schemas
//! (../shared/schemas), with draft-07 semantics as the schema notes require.

use serde_json::Value;

fn read(path: &str) -> Value {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}")))
        .unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn errors(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::draft7::new(schema).expect("schema compiles");
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn host_json_is_valid() {
    let schema = read("../shared/schemas/host.schema.json");
    let host = read("host.json");
    assert_eq!(errors(&schema, &host), Vec::<String>::new());
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"],
        "handler"
    );
    assert_eq!(host["extensions"]["queues"]["messageEncoding"], "base64");
}

#[test]
fn function_json_files_are_valid_and_name_the_bindings_the_handler_uses() {
    let schema = read("../shared/schemas/function.schema.json");
    for (file, names) in [
        ("ReferralWebhook/function.json", ["req", "res", "syncQueue"]),
        ("ReferralSync/function.json", ["msg", "poison", "poison"]),
        (
            "ReferralReconcile/function.json",
            ["timer", "watermark", "watermarkOut"],
        ),
        (
            "CrmChanges/function.json",
            ["timer", "watermark", "watermarkOut"],
        ),
    ] {
        let function = read(file);
        assert_eq!(errors(&schema, &function), Vec::<String>::new(), "{file}");
        let bindings: Vec<&str> = function["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap())
            .collect();
        for name in names {
            assert!(bindings.contains(&name), "{file} lacks {name}");
        }
    }
    let webhook = read("ReferralWebhook/function.json");
    assert_eq!(
        webhook["bindings"][0]["methods"],
        serde_json::json!(["post"])
    );
    assert_eq!(webhook["bindings"][0]["authLevel"], "function");
    assert_eq!(webhook["bindings"][2]["queueName"], "referral-sync");
    let reconcile = read("ReferralReconcile/function.json");
    assert_eq!(reconcile["bindings"][0]["type"], "timerTrigger");
    assert_eq!(
        reconcile["bindings"][0]["schedule"], "%REFERRAL_RECONCILE_SCHEDULE%",
        "the schedule is an app setting"
    );
    assert_eq!(
        reconcile["bindings"][1]["path"], reconcile["bindings"][2]["path"],
        "the input and the output binding are the same blob"
    );
    assert_eq!(reconcile["bindings"][1]["direction"], "in");
    assert_eq!(reconcile["bindings"][2]["direction"], "out");
    assert!(
        reconcile["bindings"][1].get("dataType").is_none(),
        "text blobs: no dataType, so the host passes the text and writes JSON text as is"
    );
    let changes = read("CrmChanges/function.json");
    assert_eq!(changes["bindings"][0]["schedule"], "%CRM_POLL_SCHEDULE%");
    assert_eq!(
        changes["bindings"][1]["path"],
        changes["bindings"][2]["path"]
    );
    assert_eq!(changes["bindings"][3]["name"], "poison");
    assert_eq!(changes["bindings"][3]["queueName"], "referral-sync-poison");
    let sync = read("ReferralSync/function.json");
    assert_eq!(sync["bindings"][0]["queueName"], "referral-sync");
    assert_eq!(sync["bindings"][1]["queueName"], "referral-sync-poison");
}

#[test]
fn the_schemas_catch_a_broken_file() {
    let schema = read("../shared/schemas/function.schema.json");
    let broken = serde_json::json!({"bindings": [{"type": "httpTrigger", "direction": "sideways", "name": "req"}]});
    assert!(!errors(&schema, &broken).is_empty());
}
