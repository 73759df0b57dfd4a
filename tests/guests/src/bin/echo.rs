//! echo: prints `{"program":"…","args":[…],"env":{…},"stdin":"…"}` (program
//! is argv[0], args the rest, env sorted by name, stdin read to its end,
//! invalid UTF-8 replaced), then
//! exits with the code in env var `EXIT_CODE`, or 0 when it is not set. Built
//! as a component, it can only report 0 or 1: any nonzero code shows as 1.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Serialize;

#[derive(Serialize)]
struct Echo {
    program: Option<String>,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    stdin: String,
}

fn main() {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        skyclaw_guest::fail(format!("cannot read stdin: {e}"));
    }
    let echo = Echo {
        program: std::env::args().next(),
        args: skyclaw_guest::args(),
        env: std::env::vars().collect(),
        stdin: String::from_utf8_lossy(&stdin).into_owned(),
    };
    let code = match std::env::var("EXIT_CODE") {
        Ok(code) => code
            .parse()
            .unwrap_or_else(|_| skyclaw_guest::fail(format!("EXIT_CODE {code:?} is not a number"))),
        Err(_) => 0,
    };
    if let Err(e) = skyclaw_guest::output(&echo) {
        skyclaw_guest::fail(format!("cannot write the output: {e}"));
    }
    skyclaw_guest::exit(code)
}
