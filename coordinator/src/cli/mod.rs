//! The `concord` command line: `concord serve` runs a coordinator node
//! (`serve`), `concord txn` is the operator's tool ([`admin`]), `concord
//! shards` edits a deployment's shard map ([`shards`]), `concord keys`
//! makes the signing key ([`keys`]), `concord bench` measures ([`bench`](mod@bench)).
//! Every flag also reads an environment variable (`CONCORD_*`), and
//! `serve --config FILE` a TOML file of the same settings (here). The
//! binary's `main` is [`main`]; it lives in the library so that tests can
//! build the same program with fail points on.

use std::path::PathBuf;

pub mod admin;
pub mod bench;
pub mod keys;
mod serve;
pub mod shards;

use serve::{ServeArgs, serve};

use crate::telemetry::OtlpConfig;
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "concord",
    version,
    about = "Concord distributed transaction coordinator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a coordinator node (gRPC on --listen, log in --data-dir).
    Serve(Box<ServeArgs>),
    /// Measure throughput and latency against this machine's floor.
    Bench(bench::BenchArgs),
    /// Operator tools: list, show, retry and resolve transactions.
    Txn(admin::TxnArgs),
    /// Shard map of a multi-group deployment; moving shards between groups.
    ///
    /// For a deployment of several groups of nodes (DESIGN §11): print or
    /// write its shard map, and move shards from one group to another.
    Shards(shards::ShardsArgs),
    /// Make or inspect the key that participant calls are signed with.
    ///
    /// Every call to a participant is signed with this key: `generate`
    /// makes one, `public` prints its public half.
    Keys(keys::KeysArgs),
}

/// How a command-line program ends: on an error, its reasons in one line
/// each (`Error: what: why`) and exit status 1; a usage error as clap
/// prints it (status 2). Never a stack trace, whatever `RUST_BACKTRACE`
/// says: an operator's mistake is not a crash.
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    let Err(error) = result else {
        return std::process::ExitCode::SUCCESS;
    };
    if let Some(usage) = error.downcast_ref::<clap::Error>() {
        usage.exit();
    }
    eprintln!("Error: {}", one_line(&error));
    std::process::ExitCode::FAILURE
}

/// `error` and its causes, `: `-separated, each cause left out when the
/// text before already says it (an error that prints its source in its
/// own message would otherwise say it twice).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Runs a service's `run` on a multi-threaded runtime with its logs on
/// stderr (`RUST_LOG`, default `info`; colours only on a terminal, so that
/// log files and collectors get plain text): how the examples' services
/// (`account-service`, `travel-service`) start.
pub fn run_service(run: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .try_init();
        run.await
    })
}

/// Runs the command line; returns when the command is done.
pub fn main() -> anyhow::Result<()> {
    // Fail points (tests only): FAILPOINTS="2pc-after-decision=return"
    // stops the process dead at that log boundary (see `runtime::crash`).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = parse_with_config_file(std::env::args_os().collect())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Tracing starts inside the runtime: the OTLP exporter lives on it.
        let otlp = match &cli.command {
            Command::Serve(args) => args.otlp_endpoint.clone().map(|endpoint| OtlpConfig {
                endpoint,
                service_name: args.otlp_service_name.clone(),
                instance: args.node_name.clone(),
            }),
            Command::Bench(_) | Command::Txn(_) | Command::Shards(_) | Command::Keys(_) => None,
        };
        let telemetry = crate::telemetry::init(otlp)?;
        let result = match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Txn(args) => admin::run(args).await,
            Command::Shards(args) => shards::run(args).await,
            Command::Keys(args) => keys::run(args),
        };
        telemetry.shutdown().await;
        result
    })
}

/// Parses the command line; for `serve --config FILE`, the file's settings
/// fill in every flag that neither the command line nor the environment
/// gave (precedence: flags, environment, file, built-in defaults).
fn parse_with_config_file(argv: Vec<std::ffi::OsString>) -> anyhow::Result<Cli> {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};

    let command = Cli::command();
    let matches = command.clone().get_matches_from(argv.clone());
    let Some(("serve", serve)) = matches.subcommand() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let Some(path) = serve.get_one::<PathBuf>("config") else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {} as TOML", path.display()))?;
    let serve_command = command
        .find_subcommand("serve")
        .context("the serve command")?;
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    // (flag, key as written, value) of each setting the file gives.
    let mut from_file: Vec<(String, String, String)> = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let arg = serve_command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(flag.as_str()) && flag != "config")
            .with_context(|| {
                let known: Vec<String> = serve_command
                    .get_arguments()
                    .filter_map(|arg| arg.get_long())
                    .filter(|long| *long != "config" && *long != "help")
                    .map(|long| long.replace('-', "_"))
                    .collect();
                format!(
                    "{}: unknown setting {key:?}; known: {}",
                    path.display(),
                    known.join(", ")
                )
            })?;
        let given = matches!(
            serve.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let value = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Float(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            // A list setting (client_token, allowed_participants) as an
            // array of strings: the flag's comma-separated form.
            toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => items
                .iter()
                .filter_map(toml::Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            other => anyhow::bail!(
                "{}: {key} is {}; give a string, a number, a boolean or (for a list) an \
                 array of strings",
                path.display(),
                other.type_str()
            ),
        };
        extra.push(format!("--{flag}={value}").into());
        from_file.push((flag, key, value));
    }
    // The file's settings go after the subcommand's own flags; none of them
    // was given there, so nothing is given twice.
    let mut argv = argv;
    argv.extend(extra);
    let matches = command.try_get_matches_from(argv).map_err(|error| {
        // A bad value from the file is the file's: name it, its line, the
        // key as written there, and what was expected (clap's reason).
        let blamed = error
            .get(clap::error::ContextKind::InvalidArg)
            .map(ToString::to_string)
            .unwrap_or_default();
        let Some((_, key, value)) = from_file
            .iter()
            .find(|(flag, ..)| blamed.split_whitespace().next() == Some(&format!("--{flag}")))
        else {
            return anyhow::Error::from(error);
        };
        let line = text
            .lines()
            .position(|line| {
                line.trim_start()
                    .strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map(|at| format!(", line {}", at + 1))
            .unwrap_or_default();
        let reason = std::error::Error::source(&error).map_or_else(
            || {
                error
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("error: ")
                    .to_owned()
            },
            ToString::to_string,
        );
        // A secret's value is not repeated (a token, a URL's password).
        let shown = if ["token", "url", "key"]
            .iter()
            .any(|secret| key.contains(secret))
        {
            "(hidden)".to_owned()
        } else {
            format!("{value:?}")
        };
        anyhow::anyhow!(
            "{}{line}: {key} = {shown} cannot be used ({reason})",
            path.display()
        )
    })?;
    Ok(Cli::from_arg_matches(&matches)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(file: &str, flags: &[&str]) -> anyhow::Result<ServeArgs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("concord.toml");
        std::fs::write(&path, file).expect("write");
        let mut argv: Vec<std::ffi::OsString> = vec!["concord".into(), "serve".into()];
        argv.push("--config".into());
        argv.push(path.into_os_string());
        argv.extend(flags.iter().map(|f| std::ffi::OsString::from(*f)));
        match parse_with_config_file(argv)?.command {
            Command::Serve(args) => Ok(*args),
            other => anyhow::bail!("parsed {other:?}"),
        }
    }

    #[test]
    fn the_config_file_fills_in_what_the_flags_do_not_give() {
        let args = parse(
            "lease_ms = 5000\nlisten = \"0.0.0.0:7999\"\nnode-name = \"coord-1\"\n",
            &["--listen", "127.0.0.1:7401"],
        )
        .expect("parse");
        assert_eq!(args.lease_ms, 5000, "from the file");
        assert_eq!(args.node_name.as_deref(), Some("coord-1"), "from the file");
        assert_eq!(args.listen.to_string(), "127.0.0.1:7401", "the flag wins");
        assert_eq!(args.drain_timeout_ms, 10_000, "the built-in default");
    }

    #[test]
    fn the_open_door_is_a_flag_or_a_setting_typed_on_purpose() {
        assert!(!parse("", &[]).expect("parse").allow_unprotected);
        assert!(
            parse("", &["--allow-unprotected"])
                .expect("parse")
                .allow_unprotected
        );
        assert!(
            parse("allow_unprotected = true\n", &[])
                .expect("parse")
                .allow_unprotected
        );
    }

    #[test]
    fn list_settings_take_commas_or_an_array_of_strings() {
        let args = parse(
            "client_token = [\"old\", \"new\"]\nallowed_participants = \"10.0.0.0/8,bank.internal\"\n",
            &[],
        )
        .expect("parse");
        assert_eq!(args.client_token, ["old", "new"]);
        assert_eq!(args.allowed_participants, ["10.0.0.0/8", "bank.internal"]);
        let flags = parse("", &["--client-token", "a,b", "--client-token", "c"]).expect("parse");
        assert_eq!(flags.client_token, ["a", "b", "c"]);
    }

    #[test]
    fn a_config_file_with_an_unknown_or_bad_setting_is_refused_with_the_reason() {
        let unknown = parse("lease = 5000\n", &[]).expect_err("unknown key");
        let message = format!("{unknown:#}");
        assert!(
            message.contains("unknown setting \"lease\"") && message.contains("lease_ms"),
            "{message}"
        );
        let range = parse("# the lease\nlease_ms = 5\n", &[]).expect_err("out of range");
        let range = format!("{range:#}");
        assert!(
            range.contains("concord.toml, line 2: lease_ms = \"5\"") && range.contains("300"),
            "{range}"
        );
        let typed = parse("lease_ms = \"soon\"\n", &[]).expect_err("not a number");
        let typed = format!("{typed:#}");
        assert!(typed.contains("line 1: lease_ms = \"soon\""), "{typed}");
        assert!(
            !typed.contains("--lease-ms"),
            "the file is blamed, not a flag: {typed}"
        );
        let table = parse("listen = [1, 2]\n", &[]).expect_err("array");
        assert!(format!("{table:#}").contains("give a string"), "{table:#}");
        let syntax = parse("lease_ms = \n", &[]).expect_err("syntax");
        assert!(format!("{syntax:#}").contains("TOML"), "{syntax:#}");
    }
}
