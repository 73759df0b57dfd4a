//! Jobs: WASI commands that read JSON input, write JSON output and exit with a
//! code that says whether they succeeded.

use std::fmt;
use std::io::{self, IsTerminal, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Exit code of a job that failed: [`fail`], or [`run`] when the job returns
/// `Err`.
pub const EXIT_FAILURE: i32 = 1;

/// Exit code of [`run`] when the job's input could not be read or parsed.
pub const EXIT_BAD_INPUT: i32 = 2;

/// The job's arguments, without `argv[0]` (which on Skyclaw is the program's
/// file name, or `main.wasm`).
pub fn args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

/// Where a job's input came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSource {
    /// Stdin held something other than whitespace.
    Stdin,
    /// Stdin was empty, so the first argument was used.
    Arg,
    /// Stdin was empty and there were no arguments: the input is `null`.
    Absent,
}

/// Why a job's input could not be read or parsed.
#[derive(Debug)]
pub enum InputError {
    /// Reading stdin failed.
    Read(io::Error),
    /// The input is not JSON, or not JSON of the expected shape.
    Parse {
        /// Where the input came from.
        from: InputSource,
        /// What serde_json found wrong with it.
        error: serde_json::Error,
    },
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputError::Read(e) => write!(f, "cannot read the input from stdin: {e}"),
            InputError::Parse {
                from: InputSource::Stdin,
                error,
            } => write!(f, "invalid input on stdin: {error}"),
            InputError::Parse {
                from: InputSource::Arg,
                error,
            } => write!(f, "invalid input in the first argument: {error}"),
            InputError::Parse {
                from: InputSource::Absent,
                error,
            } => write!(
                f,
                "no input given (JSON on stdin or in the first argument), \
                 and this job needs one: {error}"
            ),
        }
    }
}

impl std::error::Error for InputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InputError::Read(e) => Some(e),
            InputError::Parse { error, .. } => Some(error),
        }
    }
}

/// Reads the job's input: the JSON value on stdin, or, when stdin is empty or
/// only whitespace, the JSON value in the first argument; when there is
/// neither, the input is `null` (which an `Option<T>` accepts as `None`).
///
/// When stdin is a terminal (the job run by hand), it is not read, so the
/// input comes from the first argument.
pub fn input<T: DeserializeOwned>() -> Result<T, InputError> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        input_from(io::empty(), &args())
    } else {
        input_from(stdin.lock(), &args())
    }
}

/// [`input`] over any reader for stdin and the arguments after `argv[0]`.
pub fn input_from<T: DeserializeOwned>(
    mut stdin: impl Read,
    args: &[String],
) -> Result<T, InputError> {
    let mut text = String::new();
    stdin.read_to_string(&mut text).map_err(InputError::Read)?;
    let (from, json) = if !text.trim().is_empty() {
        (InputSource::Stdin, text.as_str())
    } else if let Some(first) = args.first() {
        (InputSource::Arg, first.as_str())
    } else {
        (InputSource::Absent, "null")
    };
    serde_json::from_str(json).map_err(|error| InputError::Parse { from, error })
}

/// Writes `value` as JSON on stdout, followed by a newline, and flushes it.
pub fn output<T: Serialize + ?Sized>(value: &T) -> io::Result<()> {
    output_to(io::stdout().lock(), value)
}

/// [`output`] to any writer.
pub fn output_to<T: Serialize + ?Sized>(mut out: impl Write, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Flushes stdout and stderr, then ends the job with exit `code` (0 means it
/// succeeded). A component (`wasm32-wasip2`) reports every nonzero code as 1.
pub fn exit(code: i32) -> ! {
    // Nothing is left to report a failed flush to.
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    std::process::exit(code)
}

/// Writes `message` and a newline on stderr, then ends the job with exit code
/// 1 ([`EXIT_FAILURE`]).
pub fn fail(message: impl fmt::Display) -> ! {
    // Nothing is left to report a failed write to; the exit code still says it.
    let _ = writeln!(io::stderr(), "{message}");
    exit(EXIT_FAILURE)
}

/// Runs a job end to end: reads its input with [`input`], calls `job` with
/// it, writes `Ok` output with [`output`] and exits 0; writes an `Err` on
/// stderr and exits 1 ([`EXIT_FAILURE`]); when the input cannot be read or
/// parsed, says why on stderr and exits 2 ([`EXIT_BAD_INPUT`]) without
/// calling `job`.
///
/// The error is written with `{:#}`, so an `anyhow::Error` shows its causes.
pub fn run<I, O, E>(job: impl FnOnce(I) -> Result<O, E>) -> !
where
    I: DeserializeOwned,
    O: Serialize,
    E: fmt::Display,
{
    let stdin = io::stdin();
    let code = if stdin.is_terminal() {
        run_with(io::empty(), io::stdout(), io::stderr(), &args(), job)
    } else {
        run_with(stdin.lock(), io::stdout(), io::stderr(), &args(), job)
    };
    exit(code)
}

/// [`run`] over any reader and writers, returning the exit code instead of
/// exiting.
pub fn run_with<I, O, E>(
    stdin: impl Read,
    mut stdout: impl Write,
    mut stderr: impl Write,
    args: &[String],
    job: impl FnOnce(I) -> Result<O, E>,
) -> i32
where
    I: DeserializeOwned,
    O: Serialize,
    E: fmt::Display,
{
    // Writes to stderr are best effort: the exit code carries the outcome.
    let input = match input_from(stdin, args) {
        Ok(input) => input,
        Err(e) => {
            let _ = writeln!(stderr, "{e}");
            return EXIT_BAD_INPUT;
        }
    };
    match job(input) {
        Ok(out) => match output_to(&mut stdout, &out) {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(stderr, "cannot write the output: {e}");
                EXIT_FAILURE
            }
        },
        Err(e) => {
            let _ = writeln!(stderr, "{e:#}");
            EXIT_FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Hello {
        name: String,
    }

    fn owned(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Runs `job` over `stdin` and `args`: (exit code, stdout, stderr).
    fn run_job<I, O, E>(
        stdin: &str,
        list: &[&str],
        job: impl FnOnce(I) -> Result<O, E>,
    ) -> (i32, String, String)
    where
        I: DeserializeOwned,
        O: Serialize,
        E: fmt::Display,
    {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(stdin.as_bytes(), &mut out, &mut err, &owned(list), job);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn input_comes_from_stdin_first() {
        let hello: Hello = input_from(&b" {\"name\":\"in\"}\n"[..], &owned(&["{}"])).unwrap();
        assert_eq!(hello.name, "in");
    }

    #[test]
    fn input_comes_from_the_first_argument_when_stdin_is_blank() {
        for stdin in ["", " \n\t"] {
            let hello: Hello =
                input_from(stdin.as_bytes(), &owned(&["{\"name\":\"arg\"}", "x"])).unwrap();
            assert_eq!(hello.name, "arg");
        }
    }

    #[test]
    fn absent_input_is_null() {
        let none: Option<Hello> = input_from(&b""[..], &[]).unwrap();
        assert_eq!(none, None);
        let err = input_from::<Hello>(&b""[..], &[]).unwrap_err();
        assert!(matches!(
            err,
            InputError::Parse {
                from: InputSource::Absent,
                ..
            }
        ));
        assert!(err.to_string().starts_with("no input given"), "{err}");
    }

    #[test]
    fn parse_errors_say_where_the_input_came_from() {
        let err = input_from::<Hello>(&b"{\"nam\":1}"[..], &[]).unwrap_err();
        assert!(matches!(
            err,
            InputError::Parse {
                from: InputSource::Stdin,
                ..
            }
        ));
        assert!(err.to_string().contains("on stdin"), "{err}");
        assert!(err.to_string().contains("missing field `name`"), "{err}");

        let err = input_from::<Hello>(&b""[..], &owned(&["not json"])).unwrap_err();
        assert!(err.to_string().contains("in the first argument"), "{err}");
    }

    #[test]
    fn read_errors_are_reported() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("gone"))
            }
        }
        let err = input_from::<Hello>(Broken, &[]).unwrap_err();
        assert!(matches!(err, InputError::Read(_)));
        assert_eq!(err.to_string(), "cannot read the input from stdin: gone");
    }

    #[test]
    fn output_is_one_json_line() {
        let mut out = Vec::new();
        output_to(&mut out, &serde_json::json!({"a": [1, "b"]})).unwrap();
        assert_eq!(out, b"{\"a\":[1,\"b\"]}\n");
    }

    #[test]
    fn run_writes_ok_output_and_exits_0() {
        let (code, out, err) = run_job("", &["{\"name\":\"Ada\"}"], |h: Hello| {
            Ok::<_, String>(serde_json::json!({ "greeting": format!("hello, {}", h.name) }))
        });
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (0, "{\"greeting\":\"hello, Ada\"}\n", "")
        );
    }

    #[test]
    fn run_reports_err_and_exits_1() {
        let (code, out, err) = run_job("null", &[], |_: Option<Hello>| {
            Err::<(), _>("it broke".to_string())
        });
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (EXIT_FAILURE, "", "it broke\n")
        );
    }

    #[test]
    fn run_reports_bad_input_and_exits_2_without_calling_the_job() {
        let (code, out, err) = run_job("[1]", &[], |_: Hello| -> Result<(), String> {
            panic!("the job must not run")
        });
        assert_eq!((code, out.as_str()), (EXIT_BAD_INPUT, ""));
        assert!(err.starts_with("invalid input on stdin: "), "{err}");
        assert!(err.ends_with('\n'));
    }

    #[test]
    fn run_reports_output_errors_and_exits_1() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut err = Vec::new();
        let code = run_with(&b"1"[..], Full, &mut err, &[], |n: u32| Ok::<_, String>(n));
        assert_eq!(code, EXIT_FAILURE);
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "cannot write the output: disk full\n"
        );
    }
}
