//! `skyclaw.toml`, the manifest `skyclaw deploy` reads: parsed once into typed
//! sections that refuse unknown keys (naming the key and its line), checked
//! by the same `ServiceSpec::validate` the coordinators apply, before anything
//! is built or uploaded.
//!
//! The `[service]` keys are the spec's own field names (`health`, `limits`,
//! `rollout` are the API's types), so a manifest reads like the spec it
//! becomes; only `name`, `wasm`, `[build]` and `[bundle]` are the CLI's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use skyclaw_api::artifacts::Digest;
use skyclaw_api::jobs::WasiLimits;
use skyclaw_api::services::{
    DEFAULT_REPLICAS, HealthCheck, Rollout, ServiceKind, ServiceSpec, validate_service_name,
};

/// The manifest's file name in a deploy directory.
pub const MANIFEST_FILE: &str = "skyclaw.toml";

/// A whole `skyclaw.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub service: ServiceSection,
    #[serde(default)]
    pub build: Option<BuildSection>,
    #[serde(default)]
    pub bundle: Option<BundleSection>,
}

/// `[service]`: what runs, under which name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub name: String,
    pub kind: ServiceKind,
    /// `native` only: the program, on the hosts' allowlists.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// `wasi-http` only: the component, relative to the deploy directory.
    #[serde(default)]
    pub wasm: Option<PathBuf>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub health: HealthCheck,
    #[serde(default)]
    pub limits: WasiLimits,
    #[serde(default)]
    pub rollout: Rollout,
}

fn default_replicas() -> u32 {
    DEFAULT_REPLICAS
}

/// `[build]`: a shell command run in the deploy directory before bundling.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    pub command: String,
}

/// `[bundle]` (native only): which files of the deploy directory ship, as
/// globs relative to it. No `include` ships everything; `exclude` wins;
/// `.git` never ships. `node_modules` is the service's choice: include it to
/// ship runtime dependencies, exclude it when the command needs none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSection {
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl Manifest {
    /// Reads and checks `DIR/skyclaw.toml`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no {MANIFEST_FILE} in {}: write one naming the service (see `skyclaw deploy \
                 --help`)",
                dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Manifest::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a manifest's text; `origin` names it in errors,
    /// which read `ORIGIN:LINE: message`.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            let message = e.message().replace("unknown field", "unknown key");
            match e.span() {
                Some(span) => anyhow::anyhow!("{origin}:{}: {message}", line_of(text, span.start)),
                None => anyhow::anyhow!("{origin}: {message}"),
            }
        })?;
        manifest
            .check()
            .with_context(|| format!("{origin}: invalid manifest"))?;
        Ok(manifest)
    }

    /// What the spec validation cannot see: the name, and which keys belong
    /// to which kind. Then the spec's own checks, with a stand-in artifact.
    fn check(&self) -> Result<()> {
        let service = &self.service;
        validate_service_name(&service.name)?;
        match service.kind {
            ServiceKind::Native => {
                if service.wasm.is_some() {
                    bail!(
                        "wasm applies to wasi-http services only; a native service ships a bundle"
                    );
                }
            }
            ServiceKind::WasiHttp => {
                if service.wasm.is_none() {
                    bail!(
                        "a wasi-http service needs wasm = \"PATH\": its component, relative to \
                         the directory of {MANIFEST_FILE}"
                    );
                }
                if self.bundle.is_some() {
                    bail!(
                        "[bundle] applies to native services only; a wasi-http service ships its wasm"
                    );
                }
            }
        }
        if let Some(build) = &self.build
            && build.command.trim().is_empty()
        {
            bail!("build.command is empty: give the command, or leave out [build]");
        }
        self.spec(Digest::from_sha256(&[0; 32])).validate()?;
        Ok(())
    }

    /// The spec to deploy, running `artifact`.
    pub fn spec(&self, artifact: Digest) -> ServiceSpec {
        let service = &self.service;
        ServiceSpec {
            kind: service.kind,
            artifact,
            command: service.command.clone(),
            args: service.args.clone(),
            env: service.env.clone(),
            replicas: service.replicas,
            health: service.health.clone(),
            limits: service.limits,
            allowed_outbound_hosts: service.allowed_outbound_hosts.clone(),
            rollout: service.rollout,
        }
    }

    /// The `[bundle]` section, or its defaults.
    pub fn bundle(&self) -> BundleSection {
        self.bundle.clone().unwrap_or_default()
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::parse(text, "skyclaw.toml").map_err(|e| format!("{e:#}"))
    }

    const NATIVE: &str = r#"
[service]
name = "ts-api"
kind = "native"
command = "node"
args = ["dist/server.js"]
replicas = 2

[service.env]
GREETING = "hi"

[service.health]
path = "/healthz"
interval_ms = 500
timeout_ms = 400

[service.rollout]
max_surge = 2
healthy_deadline_ms = 60000

[build]
command = "npm ci && npm run build"

[bundle]
include = ["dist/**", "package.json"]
exclude = ["dist/**/*.map"]
"#;

    #[test]
    fn a_native_manifest_becomes_its_spec() {
        let manifest = parse(NATIVE).unwrap();
        assert_eq!(manifest.service.name, "ts-api");
        assert_eq!(
            manifest.build.as_ref().unwrap().command,
            "npm ci && npm run build"
        );
        assert_eq!(manifest.bundle().include, ["dist/**", "package.json"]);
        assert_eq!(manifest.bundle().exclude, ["dist/**/*.map"]);
        let digest = Digest::from_sha256(&[7; 32]);
        let spec = manifest.spec(digest.clone());
        assert_eq!(spec.kind, ServiceKind::Native);
        assert_eq!(spec.artifact, digest);
        assert_eq!(spec.command.as_deref(), Some("node"));
        assert_eq!(spec.args, ["dist/server.js"]);
        assert_eq!(spec.env["GREETING"], "hi");
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.health.path, "/healthz");
        assert_eq!(spec.health.interval_ms, 500);
        // Keys left out of a table keep the API's defaults.
        assert_eq!(
            spec.health.unhealthy_threshold,
            HealthCheck::default().unhealthy_threshold
        );
        assert_eq!(spec.rollout.max_surge, 2);
        spec.validate().unwrap();
    }

    #[test]
    fn left_out_keys_take_the_apis_defaults() {
        let manifest =
            parse("[service]\nname = \"a\"\nkind = \"native\"\ncommand = \"node\"\n").unwrap();
        assert_eq!(manifest.build, None);
        assert_eq!(manifest.bundle(), BundleSection::default());
        let spec = manifest.spec(Digest::from_sha256(&[0; 32]));
        assert_eq!(spec.replicas, DEFAULT_REPLICAS);
        assert_eq!(spec.health, HealthCheck::default());
        assert_eq!(spec.rollout, Rollout::default());
        assert_eq!(spec.limits, WasiLimits::default());
        assert!(spec.args.is_empty() && spec.env.is_empty());
    }

    #[test]
    fn a_wasi_http_manifest_names_its_component() {
        let manifest = parse(
            r#"
[service]
name = "hello"
kind = "wasi-http"
wasm = "target/wasm32-wasip2/release/app.wasm"
allowed_outbound_hosts = ["https://api.example.com"]

[service.limits]
fuel = 1000000
memory_mb = 64
timeout_ms = 5000
"#,
        )
        .unwrap();
        assert_eq!(
            manifest.service.wasm.as_deref(),
            Some(Path::new("target/wasm32-wasip2/release/app.wasm"))
        );
        let spec = manifest.spec(Digest::from_sha256(&[0; 32]));
        assert_eq!(spec.kind, ServiceKind::WasiHttp);
        assert_eq!(spec.limits.memory_mb, Some(64));
        assert_eq!(spec.allowed_outbound_hosts, ["https://api.example.com"]);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let cases = [
            (
                "[service]\nname = \"a\"\nkind = \"native\"\ncommand = \"node\"\nreplicaz = 2\n",
                5,
                "replicaz",
            ),
            (
                "[service]\nname = \"a\"\nkind = \"native\"\ncommand = \"node\"\n\n[service.health]\npaht = \"/\"\n",
                7,
                "paht",
            ),
            (
                "[service]\nname = \"a\"\nkind = \"native\"\ncommand = \"node\"\n[bundel]\ninclude = []\n",
                5,
                "bundel",
            ),
            (
                "[service]\nname = \"a\"\nkind = \"native\"\ncommand = \"node\"\n[build]\ncmd = \"make\"\n",
                6,
                "cmd",
            ),
        ];
        for (text, line, key) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                err.starts_with(&format!("skyclaw.toml:{line}: unknown key `{key}`")),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn syntax_errors_and_bad_kinds_name_their_line() {
        let err = parse("[service]\nname = \"a\"\nkind = \"docker\"\n").unwrap_err();
        assert!(err.starts_with("skyclaw.toml:3:"), "{err}");
        assert!(err.contains("docker"), "{err}");
        let err = parse("[service]\nname = \"a\"\nkind = native\n").unwrap_err();
        assert!(err.starts_with("skyclaw.toml:3:"), "{err}");
        let err = parse("[service]\nkind = \"native\"\n").unwrap_err();
        assert!(err.contains("name"), "{err}");
    }

    #[test]
    fn keys_of_the_other_kind_are_refused() {
        let cases = [
            (
                "[service]\nname = \"a\"\nkind = \"native\"\ncommand = \"node\"\nwasm = \"a.wasm\"\n",
                "wasm applies to wasi-http",
            ),
            (
                "[service]\nname = \"a\"\nkind = \"native\"\n",
                "needs a command",
            ),
            (
                "[service]\nname = \"a\"\nkind = \"native\"\ncommand = \"node\"\n[service.limits]\nfuel = 5\n",
                "limits apply to wasi-http",
            ),
            (
                "[service]\nname = \"a\"\nkind = \"wasi-http\"\n",
                "needs wasm",
            ),
            (
                "[service]\nname = \"a\"\nkind = \"wasi-http\"\nwasm = \"a.wasm\"\ncommand = \"node\"\n",
                "native services only",
            ),
            (
                "[service]\nname = \"a\"\nkind = \"wasi-http\"\nwasm = \"a.wasm\"\n[bundle]\ninclude = [\"**\"]\n",
                "[bundle] applies to native",
            ),
            (
                "[service]\nname = \"Not_A_Label\"\nkind = \"native\"\ncommand = \"node\"\n",
                "DNS label",
            ),
            (
                "[service]\nname = \"a\"\nkind = \"native\"\ncommand = \"node\"\nreplicas = 100\n",
                "replicas",
            ),
            (
                "[service]\nname = \"a\"\nkind = \"native\"\ncommand = \"node\"\n[build]\ncommand = \" \"\n",
                "build.command is empty",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.starts_with("skyclaw.toml: invalid manifest"), "{err}");
        }
    }

    #[test]
    fn the_example_manifest_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ts-api");
        let manifest = Manifest::load(&dir).unwrap();
        assert_eq!(manifest.service.kind, ServiceKind::Native);
        assert!(manifest.build.is_some());
    }

    #[test]
    fn a_missing_manifest_says_where_it_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", Manifest::load(dir.path()).unwrap_err());
        assert!(err.contains("no skyclaw.toml in"), "{err}");
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
