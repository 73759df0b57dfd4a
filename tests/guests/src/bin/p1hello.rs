//! p1hello: the preview 1 guest (the tests build it for wasm32-wasip1, a core
//! module exporting `_start`). Prints `hello from preview1` followed by its
//! args (without argv[0]), each after a space, and exits with the code in its
//! first argument when that is a number, else 0.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut line = String::from("hello from preview1");
    for arg in &args {
        line.push(' ');
        line.push_str(arg);
    }
    println!("{line}");
    let code = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
    std::process::exit(code)
}
