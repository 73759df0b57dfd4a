//! hello-http: the smallest Skyclaw wasi:http service. `GET /` greets the
//! `name` in its query (`world` when there is none), `GET /health` answers
//! `ok` for the host's health probe; anything else is 404, and any method
//! but GET on these paths 405.

use skyclaw_guest::http::{Request, Response};

fn handle(request: Request) -> Response {
    let route = request.path.as_str();
    if !matches!(route, "/" | "/health") {
        return Response::text("not found").with_status(404);
    }
    if request.method != "GET" {
        return Response::text("only GET is served here")
            .with_status(405)
            .with_header("allow", "GET");
    }
    match route {
        "/health" => Response::text("ok"),
        _ => {
            let name = request
                .query_param("name")
                .unwrap_or_else(|| "world".to_string());
            Response::text(format!("hello, {name}\n"))
        }
    }
}

skyclaw_guest::http_handler!(handle);
