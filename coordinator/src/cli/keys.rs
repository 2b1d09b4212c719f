//! `concord keys`: the deployment's signing key (DESIGN §12). Every call a
//! coordinator makes to a participant is signed with it; participants
//! trust its public key. `generate` makes one, `public` prints the public
//! key of one. `concord serve` on its default SQLite data directory makes
//! its own at first start ([`load_or_create`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use concord_proto::signature::{CallSigner, generate_private_key_pem};

#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(clap::Subcommand, Debug)]
enum KeysCommand {
    /// Make a new signing key: FILE and FILE.pub.
    ///
    /// FILE is the private key (mode 0600); FILE.pub the public one, for
    /// participants (`--coordinator-key FILE.pub`). Every node of a
    /// deployment signs with the same key (`concord serve --signing-key
    /// FILE`).
    Generate {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
        /// Replace a key already there.
        ///
        /// Participants trusting only the old key then refuse this
        /// coordinator's calls: see docs/security.md, rotation.
        #[arg(long)]
        force: bool,
    },
    /// Print the public key (PEM) of a private key file.
    Public {
        /// The private key (`concord keys generate --out`).
        #[arg(long)]
        key: PathBuf,
    },
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::Generate { out, force } => {
            if out.exists() && !force {
                anyhow::bail!(
                    "{} exists; give --force to replace it (participants that trust only its \
                     public key will refuse the new one's calls)",
                    out.display()
                );
            }
            let signer = create(&out)?;
            println!(
                "wrote {} (private: give it to every node, --signing-key) and {} (public: give \
                 it to every participant, --coordinator-key); key {}",
                out.display(),
                public_path(&out).display(),
                signer.key_id()
            );
            Ok(())
        }
        KeysCommand::Public { key } => {
            print!("{}", load(&key)?.public_key_pem());
            Ok(())
        }
    }
}

/// Where the public key of the private key at `private` is written.
pub fn public_path(private: &Path) -> PathBuf {
    let mut path = private.as_os_str().to_owned();
    path.push(".pub");
    PathBuf::from(path)
}

/// Reads a private key file.
pub fn load(path: &Path) -> anyhow::Result<CallSigner> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the signing key {}", path.display()))?;
    CallSigner::from_pem(&text).with_context(|| format!("the signing key {}", path.display()))
}

/// Makes a new key at `path` (readable by its owner alone) and its public
/// key beside it.
fn create(path: &Path) -> anyhow::Result<CallSigner> {
    use std::os::unix::fs::OpenOptionsExt;
    let pem = generate_private_key_pem()?;
    let signer = CallSigner::from_pem(&pem)?;
    // Written under a temporary name and renamed: a crash leaves either no
    // key or a whole one, never half a key that the next start would read.
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    let public = public_path(path);
    std::fs::write(&public, signer.public_key_pem())
        .with_context(|| format!("writing {}", public.display()))?;
    Ok(signer)
}

/// The key a node signs with: `--signing-key FILE` when given; otherwise
/// `signing.key` in the SQLite data directory, made at its first start
/// (with `signing.key.pub` beside it for participants).
pub fn load_or_create(flag: Option<&Path>, data_dir: &Path) -> anyhow::Result<CallSigner> {
    if let Some(path) = flag {
        return load(path);
    }
    let path = data_dir.join("signing.key");
    if path.exists() {
        return load(&path);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let signer = create(&path)?;
    tracing::info!(
        key = %signer.key_id(),
        public = %public_path(&path).display(),
        "made this node's signing key: participants obey its calls once they trust the public key"
    );
    Ok(signer)
}
