//! The deploy manifests cannot be started here (no container engine): check that they
//! parse, and that every image, command and environment variable they use exists.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

use crate::harness::crm;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path} does not parse: {e}"))
}

/// A crm container: its command line and environment.
type Container = (Vec<String>, Vec<(String, String)>);

/// Every crm container in a YAML tree.
fn containers(y: &Yaml, out: &mut Vec<Container>) {
    match y {
        Yaml::Hash(h) => {
            let image = h.get(&Yaml::String("image".into())).and_then(|i| i.as_str());
            if image == Some("crm:latest") {
                let args = ["command", "args"]
                    .iter()
                    .filter_map(|k| h.get(&Yaml::String((*k).into())))
                    .flat_map(|v| v.as_vec().cloned().unwrap_or_default())
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                let mut env = Vec::new();
                if let Some(Yaml::Hash(e)) = h.get(&Yaml::String("environment".into())) {
                    for (k, v) in e {
                        env.push((
                            k.as_str().unwrap().to_string(),
                            v.as_str().unwrap_or_default().to_string(),
                        ));
                    }
                }
                if let Some(Yaml::Array(list)) = h.get(&Yaml::String("env".into())) {
                    for item in list {
                        env.push((
                            item["name"].as_str().unwrap().into(),
                            item["value"].as_str().unwrap_or_default().into(),
                        ));
                    }
                }
                out.push((args, env));
            }
            for (_, v) in h {
                containers(v, out);
            }
        }
        Yaml::Array(a) => a.iter().for_each(|v| containers(v, out)),
        _ => {}
    }
}

/// `crm config` with these arguments' roles and env must accept them.
fn check(args: &[String], env: &[(String, String)], extra_env: &[(String, String)]) {
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut help = crm();
    help.arg("--data-dir").arg(dir.path()).args(args).arg("--help");
    let out = help.output().unwrap();
    assert!(
        out.status.success(),
        "crm {args:?} is not a valid command line: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = crm();
    cmd.arg("config");
    for (k, v) in env.iter().chain(extra_env) {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "env {env:?} is not a valid configuration: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_and_kubernetes_manifests_use_only_what_exists() {
    assert!(
        root().join("deploy/Dockerfile").exists(),
        "the crm:latest image is built from deploy/Dockerfile"
    );
    let compose = load("deploy/compose.yaml");
    let mut found = Vec::new();
    containers(&compose[0], &mut found);
    assert_eq!(found.len(), 3, "ingest, domain, api");
    let dockerfile = compose[0]["services"]["ingest"]["build"]["dockerfile"]
        .as_str()
        .unwrap();
    assert!(root().join(dockerfile).exists(), "{dockerfile}");
    for (args, env) in &found {
        check(args, env, &[]);
    }

    let k8s = load("deploy/kubernetes/crm.yaml");
    let shared: Vec<(String, String)> = k8s
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .and_then(|d| d["data"].as_hash().cloned())
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string()))
        .collect();
    let mut found = Vec::new();
    for doc in &k8s {
        containers(doc, &mut found);
    }
    assert_eq!(found.len(), 3);
    for (args, env) in &found {
        check(args, env, &shared);
    }
}
