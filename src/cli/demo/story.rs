//! The demo's story: who the seeded patients are, what the simulator will answer for
//! each, and how they are imported. The tour in [`super`] prints what came of them.

use std::collections::HashMap;

use anyhow::{Context, anyhow};

use crate::simulator::Simulator;
use crate::store::import::ImportTx;
use crate::sweep::Engine;
use crate::token::parse_import_line;

/// One kind of patient in the seeded population: its share, the simulator's script for
/// its token, and what the demo expects the two sweeps to make of it.
struct Kind {
    name: &'static str,
    per_thousand: u32,
    supplier: &'static str,
    script: &'static [&'static str],
}

/// The mix: mostly good tokens; some revoked in each way EMIS says so; and the supplier
/// trouble that must never flag anyone (outages, throttling, garbage, practices offline).
const POPULATION: &[Kind] = &[
    Kind { name: "EMIS: valid", per_thousand: 420, supplier: "emis", script: &["valid"] },
    Kind {
        name: "EMIS: not registered at the practice",
        per_thousand: 20,
        supplier: "emis",
        script: &["not_registered"],
    },
    Kind { name: "EMIS: linkage no longer matches", per_thousand: 15, supplier: "emis", script: &["invalid_linkage"] },
    Kind { name: "EMIS: account inactive", per_thousand: 10, supplier: "emis", script: &["account_inactive"] },
    Kind { name: "EMIS: access forbidden", per_thousand: 10, supplier: "emis", script: &["forbidden"] },
    Kind { name: "EMIS: online access restricted", per_thousand: 5, supplier: "emis", script: &["restricted_link"] },
    Kind {
        name: "EMIS: practice services disabled",
        per_thousand: 10,
        supplier: "emis",
        script: &["practice_not_enabled"],
    },
    Kind { name: "EMIS: outage, then fine", per_thousand: 20, supplier: "emis", script: &["unavailable", "valid"] },
    Kind { name: "EMIS: rate limited", per_thousand: 10, supplier: "emis", script: &["rate_limited"] },
    Kind { name: "EMIS: garbage answers", per_thousand: 10, supplier: "emis", script: &["garbage"] },
    Kind {
        name: "EMIS: revoked, then supplier down",
        per_thousand: 5,
        supplier: "emis",
        script: &["not_registered", "server_error"],
    },
    Kind { name: "TPP: valid", per_thousand: 180, supplier: "tpp", script: &["valid"] },
    Kind {
        name: "TPP: problem logging on (9)",
        per_thousand: 10,
        supplier: "tpp",
        script: &["tpp_problem_logging_on"],
    },
    Kind { name: "TPP: no access (6)", per_thousand: 10, supplier: "tpp", script: &["tpp_no_access"] },
    Kind {
        name: "TPP: service unavailable (0)",
        per_thousand: 10,
        supplier: "tpp",
        script: &["tpp_service_unavailable"],
    },
    Kind { name: "Vision: valid", per_thousand: 150, supplier: "vision", script: &["valid"] },
    Kind {
        name: "Vision: invalid credentials (-30)",
        per_thousand: 10,
        supplier: "vision",
        script: &["vision_invalid_credentials"],
    },
    Kind { name: "Vision: disabled (-19)", per_thousand: 5, supplier: "vision", script: &["vision_disabled"] },
    Kind {
        name: "Vision: access denied (-35)",
        per_thousand: 5,
        supplier: "vision",
        script: &["vision_access_denied"],
    },
    Kind {
        name: "Vision: record locked (-15)",
        per_thousand: 10,
        supplier: "vision",
        script: &["vision_record_unavailable"],
    },
    Kind { name: "Microtest (no usable token)", per_thousand: 45, supplier: "microtest", script: &[] },
];

/// Seeds the population; returns user id → kind name.
pub(super) async fn seed(
    engine: &Engine,
    sim: &Simulator,
    users: u32,
) -> anyhow::Result<HashMap<String, &'static str>> {
    let mut kinds = HashMap::new();
    let total: u32 = POPULATION.iter().map(|k| k.per_thousand).sum();
    let mut tx = ImportTx::begin(&engine.pool, &engine.keys, engine.clock.now()).await?;
    let mut batch = Vec::new();
    for i in 0..users {
        let slot = (i as u64 * 7919 % total as u64) as u32; // spread kinds through the ids
        let mut acc = 0;
        let kind = POPULATION
            .iter()
            .find(|k| {
                acc += k.per_thousand;
                slot < acc
            })
            .unwrap_or(&POPULATION[0]);
        let user_id = format!("demo-user-{i:06}");
        let token = uuid::Uuid::new_v4().to_string();
        let ods = format!("A{:05}", 81000 + i % 400);
        let line = match kind.supplier {
            "microtest" => {
                serde_json::json!({"user_id": user_id, "supplier": "microtest", "ods_code": ods, "token": {}})
            }
            "tpp" => serde_json::json!({"user_id": user_id, "supplier": "tpp", "ods_code": ods,
                                        "token": {"account_id": token, "passphrase": uuid::Uuid::new_v4().to_string()}}),
            "vision" => {
                sim.set_vision_practice(&token, &ods);
                serde_json::json!({"user_id": user_id, "supplier": "vision", "ods_code": ods,
                                   "token": {"rosu_account_id": token, "api_key": uuid::Uuid::new_v4().to_string()}})
            }
            _ => serde_json::json!({"user_id": user_id, "supplier": "emis", "ods_code": ods,
                                    "token": {"access_identity_guid": token}}),
        };
        let cred = parse_import_line(&line.to_string()).map_err(|e| {
            anyhow!("demo seed line {i}: {}", e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        })?;
        if !kind.script.is_empty() {
            let steps = kind
                .script
                .iter()
                .map(|s| serde_json::from_value(serde_json::Value::String((*s).to_owned())))
                .collect::<Result<Vec<_>, _>>()
                .context("demo script")?;
            sim.script(&token, steps);
        }
        kinds.insert(user_id, kind.name);
        batch.push((u64::from(i) + 1, cred));
        if batch.len() == 1000 {
            tx.add(std::mem::take(&mut batch)).await?;
        }
    }
    tx.add(batch).await?;
    tx.commit().await?;
    Ok(kinds)
}

/// Where a kind comes in [`POPULATION`], so tables list kinds in the story's order.
pub(super) fn order_of(name: &str) -> usize {
    POPULATION.iter().position(|k| k.name == name).unwrap_or(usize::MAX)
}
