//! hello-job: the smallest Skyclaw WASI job. Reads `{"name": "..."}` (on stdin,
//! or in the first argument when stdin is empty) and prints
//! `{"greeting":"hello, <name>"}`; the name is "world" when the input or its
//! `name` is left out.

use std::convert::Infallible;

use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Hello {
    #[serde(default = "world")]
    name: String,
}

#[derive(Serialize)]
struct Greeting {
    greeting: String,
}

fn world() -> String {
    "world".to_string()
}

fn main() {
    skyclaw_guest::run(|hello: Option<Hello>| -> Result<Greeting, Infallible> {
        let name = hello.map_or_else(world, |h| h.name);
        Ok(Greeting {
            greeting: format!("hello, {name}"),
        })
    })
}
