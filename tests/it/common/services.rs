//! The kit's part for services run by real hosts: port ranges no two hosts
//! of a test run share, bundles built from files the test writes, waiting on
//! a service's state, and reading what its endpoints answer.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use skyclaw_api::Client;
use skyclaw_api::services::{DeployStatus, InstanceState, Service, ServiceSpec};

use super::eventually;

/// Ports one test host gets for its instances.
const PORTS_PER_HOST: u32 = 16;
/// Where test hosts' port ranges start and how far they reach: below
/// Linux's ephemeral ports (32768 and up), which the test run's own
/// connections take.
const FIRST_TEST_PORT: u32 = 21_000;
const TEST_PORT_SPAN: u32 = 11_000;

/// A `--service-ports` value no other host of this test process holds; test
/// processes start at different places, and a host skips a port another
/// process listens on.
pub fn service_ports() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let turn = NEXT.fetch_add(1, Ordering::Relaxed);
    let slots = TEST_PORT_SPAN / PORTS_PER_HOST;
    let slot = (std::process::id().wrapping_mul(7) + turn) % slots;
    let first = FIRST_TEST_PORT + slot * PORTS_PER_HOST;
    format!("{first}-{}", first + PORTS_PER_HOST - 1)
}

/// Writes `files` (path, content) under `dir/src`, bundles them, uploads the
/// bundle and returns its digest.
pub async fn push_files(client: &Client, dir: &Path, files: &[(&str, &str)]) -> String {
    let src = dir.join("src");
    for (path, content) in files {
        let path = src.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let out = dir.join("bundle.tar");
    skyclaw_runtime::bundle::build(&src, &[], &[], &out).expect("build the bundle");
    std::fs::remove_dir_all(&src).unwrap();
    push_file(client, &out).await
}

/// Uploads a file and returns its digest.
pub async fn push_file(client: &Client, path: &Path) -> String {
    let (info, _) = client
        .put_artifact(path)
        .await
        .expect("upload the artifact");
    info.digest.to_string()
}

/// A native service spec running `node` with `args`.
pub fn node_service(digest: &str, args: &[&str], replicas: u32) -> ServiceSpec {
    serde_json::from_value(serde_json::json!({
        "kind": "native", "artifact": digest, "command": "node", "args": args,
        "replicas": replicas,
    }))
    .expect("a valid spec")
}

/// Waits until `name`'s deploy of `version` ended with `status`.
pub async fn wait_deploy(
    client: &Client,
    name: &str,
    version: u64,
    status: DeployStatus,
) -> Service {
    eventually(&format!("{name} v{version} to be {status:?}"), || async {
        let service = client.get_service(name).await.ok()?;
        (service.deploy.version == version && service.deploy.status == status).then_some(service)
    })
    .await
}

/// The endpoints of `service`'s healthy instances of `version`.
pub fn healthy_endpoints(service: &Service, version: u64) -> Vec<String> {
    service
        .instances
        .iter()
        .filter(|i| i.version == version && i.state == InstanceState::Healthy)
        .filter_map(|i| i.endpoint.clone())
        .collect()
}

/// What `GET {endpoint}{path}` answers, with its status; each call on a
/// connection of its own.
pub async fn get_text(endpoint: &str, path: &str) -> Result<(u16, String), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let answer = client
        .get(format!("{endpoint}{path}"))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("GET {endpoint}{path}: {e}"))?;
    let status = answer.status().as_u16();
    let body = answer.text().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// A node HTTP server for tests: `/health` answers once it listens, `/`
/// answers `v$VERSION`, SIGTERM closes it, and it prints where it listens.
pub const NODE_SERVER: &str = r#"
const http = require('http');
const version = process.env.VERSION || '1';
const server = http.createServer((req, res) => {
  if (req.url === '/health') { res.end('ok'); return; }
  res.end('v' + version);
});
server.listen(Number(process.env.PORT), process.env.HOST, () => {
  console.log('listening on ' + process.env.HOST + ':' + process.env.PORT);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
"#;

/// One entry of a hand-made tar archive: the kinds and names a well-made
/// bundle never holds, which hosts must refuse.
pub struct RawEntry<'a> {
    pub name: &'a str,
    /// The tar type flag: `b'0'` file, `b'1'` hard link, `b'2'` symlink,
    /// `b'3'` character device, `b'5'` directory, `b'6'` fifo.
    pub kind: u8,
    pub link: &'a str,
    pub data: &'a [u8],
}

/// A ustar archive of `entries`, written byte by byte so that it may hold
/// what archive libraries refuse to write.
pub fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = [0u8; 512];
        header[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
        let octal = |field: &mut [u8], value: u64| {
            let text = format!("{value:0width$o}", width = field.len() - 1);
            field[..text.len()].copy_from_slice(text.as_bytes());
        };
        octal(&mut header[100..108], 0o644);
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], entry.data.len() as u64);
        octal(&mut header[136..148], 0);
        header[156] = entry.kind;
        header[157..157 + entry.link.len()].copy_from_slice(entry.link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].fill(b' ');
        let sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(text.as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(entry.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}
