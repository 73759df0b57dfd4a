//! The command line as a newcomer types it: connection flags before or after
//! the subcommand, usage lines that count what the environment provides, and
//! range errors that say the range.

use crate::common;

use common::{Network, TOKEN, skyclaw};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `--coordinator`, `--token`, `--api-key` and `--json` go anywhere:
/// before the subcommand, between, after.
#[tokio::test]
async fn connection_flags_go_before_or_after_the_subcommand() {
    let net = Network::start("echo", &[]).await;
    let url = net.coordinator.url.as_str();
    let out = skyclaw()
        .args([
            "--coordinator",
            url,
            "--token",
            TOKEN,
            "job",
            "shell",
            "--wait",
        ])
        .args(["--", "echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    for args in [
        &[
            "--json",
            "--coordinator",
            url,
            "--token",
            TOKEN,
            "job",
            "ls",
        ][..],
        &[
            "--coordinator",
            url,
            "job",
            "--json",
            "ls",
            "--token",
            TOKEN,
        ],
        &[
            "job",
            "ls",
            "--json",
            "--coordinator",
            url,
            "--token",
            TOKEN,
        ],
    ] {
        let out = skyclaw().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1), "{args:?}");
    }
    let out = skyclaw()
        .args([
            "--coordinator",
            url,
            "--api-key",
            "skyclaw_nope",
            "job",
            "ls",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown or revoked api key"),
        "{}",
        stderr(&out)
    );
}

/// A flag an environment variable provides is not missing, so usage lines
/// do not list it as required.
#[test]
fn usage_lines_leave_out_what_the_environment_provides() {
    let usage = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = skyclaw();
        cmd.args(args).arg("--no-such-flag");
        for (name, value) in env {
            cmd.env(name, value);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let text = stderr(&out);
        text.lines()
            .find(|l| l.starts_with("Usage:"))
            .unwrap_or_else(|| panic!("no usage line: {text}"))
            .to_string()
    };
    let line = usage(&["coordinator"], &[]);
    assert!(line.contains("--data-dir <DIR>"), "{line}");
    let line = usage(&["coordinator"], &[("SKYCLAW_DATA_DIR", "/srv/skyclaw")]);
    assert!(!line.contains("--data-dir"), "{line}");

    let line = usage(&["host"], &[]);
    assert!(line.contains("--allow-commands"), "{line}");
    let env = [
        ("SKYCLAW_DATA_DIR", "/srv/host"),
        ("SKYCLAW_ALLOWED_COMMANDS", "echo"),
    ];
    let line = usage(&["host"], &env);
    assert!(
        !line.contains("--data-dir") && !line.contains("--allow-commands"),
        "{line}"
    );

    let line = usage(&["job", "openclaw"], &[("SKYCLAW_OPENCLAW_MESSAGE", "hi")]);
    assert!(!line.contains("--message"), "{line}");
    let line = usage(&["apikey", "create"], &[("SKYCLAW_APIKEY_NAME", "ci")]);
    assert!(
        !line.contains("--name") && line.contains("--scope"),
        "{line}"
    );
}

/// Range errors say the range the flag takes (not 1..18446744073709551615),
/// and WASI limits say what hosts grant.
#[test]
fn range_errors_say_the_real_range() {
    let error = |args: &[&str]| {
        let out = skyclaw().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        stderr(&out)
    };
    for args in [
        &["job", "wasi", "--timeout-ms", "0", "app.wasm"][..],
        &["job", "shell", "--timeout-ms", "0", "--", "true"],
        &[
            "job",
            "openclaw",
            "--message",
            "hi",
            "--timeout-ms",
            "90000000",
        ],
    ] {
        let said = error(args);
        assert!(
            said.contains("must be between 1 and 86400000"),
            "{args:?}: {said}"
        );
        assert!(!said.contains("18446744073709551615"), "{said}");
    }
    let said = error(&["job", "wasi", "--fuel", "0", "app.wasm"]);
    assert!(said.contains("must be at least 1"), "{said}");
    let said = error(&["job", "wasi", "--memory-mb", "5000", "app.wasm"]);
    assert!(said.contains("must be between 1 and 4096"), "{said}");
    let said = error(&["job", "shell", "--max-attempts", "11", "--", "true"]);
    assert!(said.contains("must be between 1 and 10"), "{said}");
    let said = error(&["coordinator", "--data-dir", "d", "--lease-ms", "0"]);
    assert!(said.contains("must be at least 1"), "{said}");
    for workers in ["0", "5000"] {
        let said = error(&["gateway", "--token", "t", "--workers", workers]);
        assert!(said.contains("must be between 1 and 1024"), "{said}");
    }

    let out = skyclaw().args(["job", "wasi", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let memory = help
        .split("--memory-mb")
        .nth(1)
        .and_then(|rest| rest.split("--timeout-ms").next())
        .unwrap_or_default();
    assert!(
        memory.contains("--wasi-max-memory-mb") && memory.contains("1024 MiB"),
        "what hosts grant: {help}"
    );
}
