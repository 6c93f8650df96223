//! Starts the real `crm` binary on a free loopback port and talks to it over HTTP.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub url: String,
    child: Option<Child>,
    pub client: reqwest::Client,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn crm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crm"))
}

impl Server {
    pub async fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, &[], &[]).await
    }

    pub async fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_on(data_dir, args, env, &free_port().to_string()).await
    }

    /// Starts on a given port (e.g. to restart a process where others expect it).
    pub async fn start_on(data_dir: &Path, args: &[&str], env: &[(&str, &str)], port: &str) -> Server {
        let log = std::fs::File::create(data_dir.with_extension(format!("{port}.log"))).unwrap();
        let mut cmd = crm();
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("crm binary starts");
        let server = Server {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = server.client.get(format!("{}/readyz", server.url)).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "crm serve did not become ready within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// POSTs a form; returns the status and the JSON body.
    pub async fn post_form(&self, form: &str, content_type: &str, body: impl Into<String>) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(format!("{}/v1/channels/web-form/{form}", self.url))
            .header("content-type", content_type)
            .body(body.into())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub async fn graphql(&self, query: &str) -> serde_json::Value {
        let resp: serde_json::Value = self
            .client
            .post(format!("{}/graphql", self.url))
            .json(&serde_json::json!({ "query": query }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(resp.get("errors").is_none(), "GraphQL errors: {resp}");
        resp["data"].clone()
    }

    /// Polls a GraphQL query until `done` holds (projections are asynchronous).
    pub async fn eventually(&self, query: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let data = self.graphql(query).await;
            if done(&data) {
                return data;
            }
            assert!(
                Instant::now() < deadline,
                "condition not met within 30 s; last answer: {data}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server running");
        let pid = c.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        c.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
