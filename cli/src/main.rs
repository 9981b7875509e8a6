//! `norn`: the command line. Talks to the API, except `norn up`.

mod changes;
mod client;
mod cron;
mod forge;
mod invoke;
mod keyfile;
mod localpg;
mod secrets;
mod snapshots;
mod tokens;
mod up;
mod webhooks;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "norn",
    version,
    about = "Norn: deploy your apps on your own machines"
)]
struct Cli {
    /// The Norn API.
    #[arg(
        long,
        env = "NORN_URL",
        default_value = "http://127.0.0.1:8800",
        global = true
    )]
    api: String,
    /// Bearer token (the server's NORN_API_TOKEN).
    #[arg(long, env = "NORN_API_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start api, worker and scheduler in this process (and a private Postgres if DATABASE_URL is unset).
    Up,
    /// Deploy an app at a ref (branch, tag or SHA; default HEAD) and follow it,
    /// printing each step's output live.
    Deploy {
        app: String,
        r#ref: Option<String>,
        /// Only the steps, not their output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// A deployment's full step output (up to NORN_STEP_LOG_MAX per step).
    Logs {
        deployment: String,
        /// Only this step (clone, build, test, snapshot, migrate, deploy, healthy, cleanup).
        #[arg(long)]
        step: Option<String>,
        /// Keep printing until the step (or the deployment) ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Registered apps and recent deployments.
    Status,
    /// Norn's shared services (Postgres, the app database server, container
    /// engines, KV, brokers), each up or down with the error; exit 1 unless all are up.
    Health,
    /// Cancel a deployment: a queued one ends at once, a running one stops
    /// within seconds (its step is killed, the previous release keeps serving).
    Cancel { deployment: String },
    /// The fleet: every api, worker and scheduler process, its status and heartbeat;
    /// `drain <id>` makes a worker stop claiming and finish what it holds.
    Nodes {
        #[command(subcommand)]
        action: Option<NodesAction>,
    },
    /// An app database's snapshots and recent restores, or restore one.
    Snapshots {
        app: String,
        #[command(subcommand)]
        action: Option<SnapshotsAction>,
    },
    /// Put an earlier release back (default: the one before the current), with
    /// no build and no migration, health-gated like any deploy; then follow it.
    Rollback {
        app: String,
        /// The deployment whose image to go back to.
        #[arg(long)]
        to: Option<String>,
    },
    /// Provision the app's services (its database and role, its KV user, its
    /// tunnel rules; topics are not provisioned yet) and follow the forge to
    /// its end.
    Forge {
        app: String,
        /// Tear a forged app down first (keeping its data), then forge it again.
        #[arg(long)]
        force: bool,
    },
    /// The app's public hostnames: each routed by Norn's ingress, and
    /// whether the forge wrote its tunnel (cloudflared) rule.
    Endpoints { app: String },
    /// The app's topics: each one's name on the brokers (`<app>.<topic>`)
    /// and whether the forge made it.
    Topics { app: String },
    /// Reverse the forge: the app's role loses its login; its data is kept
    /// unless --drop-data --yes.
    Teardown {
        app: String,
        /// Also drop the app's databases.
        #[arg(long)]
        drop_data: bool,
        /// Required with --drop-data.
        #[arg(long)]
        yes: bool,
    },
    /// An app's secrets: list names, set or unset values; `norn secrets
    /// rotate-key` re-seals every stored value with the server's current key.
    Secrets {
        app: String,
        #[command(subcommand)]
        action: Option<secrets::Action>,
    },
    /// API tokens with a role (admin only): create (shown once), list, revoke.
    Tokens {
        #[command(subcommand)]
        action: tokens::Action,
    },
    /// An app's preview environments (one per open pull request).
    Previews { app: String },
    /// Git forge webhooks (admin): an app's own secret, deliveries, replay.
    Webhooks {
        #[command(subcommand)]
        action: webhooks::Action,
    },
    /// Run an app's function once: the body goes to its stdin, its output
    /// is printed, and norn exits with its exit code.
    Invoke(invoke::Args),
    /// Norn's change runner (`migrations.dir`): `norn changes <app>` through
    /// the API on the deployed commit, or `--dir <folder>` against
    /// DATABASE_URL (local mode, for developers): list, check, run, revert,
    /// rewind, dry-run.
    Changes(changes::Args),
    /// A cron app: show its state and recent runs, or act on it.
    Cron {
        app: String,
        #[command(subcommand)]
        action: Option<cron::Action>,
    },
}

#[derive(Subcommand)]
enum SnapshotsAction {
    /// Replace the database's contents with the snapshot taken at <ts> (YYYYMMDDTHHMMSS).
    Restore {
        ts: String,
        /// Required: a restore replaces everything in the database.
        #[arg(long)]
        yes: bool,
        /// Dump the current state first.
        #[arg(long)]
        pre_restore: bool,
    },
}

#[derive(Subcommand)]
enum NodesAction {
    Drain { id: String },
}

#[tokio::main]
async fn main() {
    let Cli {
        api,
        token,
        command,
    } = Cli::parse();
    let api = client::Api::new(&api, token);
    let result = match command {
        Command::Invoke(args) => invoke::run(&api, args).await,
        command => run(&api, command).await.map(|ok| if ok { 0 } else { 1 }),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("norn: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(api: &client::Api, command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Up => {
            norn_shared::bootstrap::init_logging();
            up::run(norn_shared::Config::from_env()?).await?;
            Ok(true)
        }
        Command::Deploy { app, r#ref, quiet } => {
            client::deploy(api, &app, r#ref.as_deref(), quiet).await
        }
        Command::Logs {
            deployment,
            step,
            follow,
        } => client::logs(api, &deployment, step.as_deref(), follow)
            .await
            .map(|_| true),
        Command::Status => client::status(api).await.map(|_| true),
        Command::Health => client::health(api).await,
        Command::Rollback { app, to } => client::rollback(api, &app, to.as_deref()).await,
        Command::Nodes { action: None } => client::nodes(api).await.map(|_| true),
        Command::Nodes {
            action: Some(NodesAction::Drain { id }),
        } => client::drain(api, &id).await.map(|_| true),
        Command::Snapshots { app, action: None } => snapshots::list(api, &app).await.map(|_| true),
        Command::Snapshots {
            app,
            action:
                Some(SnapshotsAction::Restore {
                    ts,
                    yes,
                    pre_restore,
                }),
        } => snapshots::restore(api, &app, &ts, yes, pre_restore).await,
        Command::Cancel { deployment } => client::cancel(api, &deployment).await.map(|_| true),
        Command::Forge { app, force } => forge::forge(api, &app, force).await,
        Command::Endpoints { app } => forge::endpoints(api, &app).await.map(|_| true),
        Command::Topics { app } => forge::topics(api, &app).await.map(|_| true),
        Command::Teardown {
            app,
            drop_data,
            yes,
        } => forge::teardown(api, &app, drop_data, yes).await,
        Command::Secrets { app, action } => secrets::run(api, &app, action).await,
        Command::Cron { app, action } => cron::run(api, &app, action).await.map(|_| true),
        Command::Invoke(args) => invoke::run(api, args).await.map(|code| code == 0),
        Command::Changes(args) => changes::run(api, args).await,
        Command::Tokens { action } => tokens::run(api, action).await,
        Command::Webhooks { action } => webhooks::run(api, action).await,
        Command::Previews { app } => webhooks::previews(api, &app).await,
    }
}
