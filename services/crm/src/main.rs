//! `dealmesh-crm`: serve the CRM, migrate its schema, mint a development
//! token, or call a running CRM as a client.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dealmesh_crm::app::{self, App};
use dealmesh_crm::config::CrmConfig;
use dealmesh_proto::v1::crm_service_client::CrmServiceClient;
use dealmesh_proto::v1::{CrmCommand, CrmDealSort, ListDealsRequest, MoveStageRequest};
use dealmesh_runtime::launch;

/// A replay allocates and frees a few small strings per field of every
/// event; mimalloc does that at a fraction of the system allocator's cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "dealmesh-crm",
    version,
    about = "The dealmesh CRM: read model, queries and commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Project the deal log and serve gRPC and the admin endpoints until SIGTERM.
    Serve,
    /// Create the database and schema if missing and apply migrations, then exit.
    Migrate,
    /// Print an HS256 development token signed with DEALMESH_JWT_HS256_SECRET.
    Token {
        #[arg(long)]
        sub: String,
        /// admin, partner, analyst, lp or service.
        #[arg(long)]
        role: String,
        /// The LP id (LPs only; defaults to --sub).
        #[arg(long)]
        lp_id: Option<String>,
        /// Lifetime, e.g. 30m, 12h. Default 12h.
        #[arg(long, default_value = "12h")]
        ttl: String,
    },
    /// Rebuild the read model from the first offset into a new schema beside
    /// the live one; with --swap, swap it in once it has caught up.
    Rebuild(dealmesh_crm::cli::RebuildArgs),
    /// Audits: history, export, snapshot as of a time, checksum, verify.
    #[command(subcommand)]
    Audit(dealmesh_crm::cli::AuditCommand),
    /// Call a running CRM.
    Client {
        /// The server, e.g. http://127.0.0.1:50053.
        #[arg(long, default_value = "http://127.0.0.1:50053", global = true)]
        server: String,
        /// Bearer token (see `dealmesh-crm token`).
        #[arg(
            long,
            env = "DEALMESH_CRM_TOKEN",
            global = true,
            hide_env_values = true
        )]
        token: Option<String>,
        #[command(subcommand)]
        call: Call,
    },
}

#[derive(Subcommand)]
enum Call {
    /// List deals, best score first (or most recent with --recent).
    ListDeals {
        #[arg(long)]
        stage: Vec<String>,
        #[arg(long, default_value = "")]
        query: String,
        #[arg(long)]
        recent: bool,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Move a deal to another stage.
    MoveStage {
        #[arg(long)]
        deal: String,
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Defaults to a fresh key; pass the same key to retry safely.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Token {
            sub,
            role,
            lp_id,
            ttl,
        } => return token(&sub, &role, lp_id, &ttl),
        Command::Client {
            server,
            token,
            call,
        } => return client(server, token, call),
        Command::Serve | Command::Migrate | Command::Rebuild(_) | Command::Audit(_) => {}
    }
    let serving = matches!(cli.command, Command::Serve);
    // An audit prints its report on stdout, where the logs also go.
    let reporting = matches!(cli.command, Command::Audit(_));
    launch::run_reporting(
        "dealmesh-crm",
        reporting,
        |source| {
            if serving {
                CrmConfig::from_source(source)
            } else {
                CrmConfig::for_offline_commands(source)
            }
        },
        |config| async move {
            match cli.command {
                Command::Serve => {
                    let grace = config.shutdown_grace;
                    launch::serve(grace, |shutdown| async move {
                        App::build(config).await?.run(shutdown).await
                    })
                    .await
                }
                Command::Rebuild(args) => Ok(dealmesh_crm::cli::rebuild(&args, &config).await),
                Command::Audit(command) => {
                    Ok(dealmesh_crm::cli::audit(&command, &config, &mut std::io::stdout()).await)
                }
                _ => {
                    app::database(&config).await?;
                    tracing::info!(schema = %config.schema, "migrations applied");
                    Ok(ExitCode::SUCCESS)
                }
            }
        },
    )
}

fn runtime_error(error: &std::io::Error) -> ExitCode {
    eprintln!("dealmesh-crm: cannot start runtime: {error}");
    ExitCode::from(dealmesh_runtime::launch::EXIT_SOFTWARE)
}

fn parse_ttl(ttl: &str) -> Option<Duration> {
    let split = ttl.find(|c: char| !c.is_ascii_digit()).unwrap_or(ttl.len());
    let n: u64 = ttl[..split].parse().ok()?;
    Some(match &ttl[split..] {
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => return None,
    })
}

fn token(sub: &str, role: &str, lp_id: Option<String>, ttl: &str) -> ExitCode {
    let Some(role) = dealmesh_auth::Role::parse(role) else {
        eprintln!("dealmesh-crm: --role {role:?}: expected admin, partner, analyst, lp or service");
        return ExitCode::from(64);
    };
    let Some(ttl) = parse_ttl(ttl) else {
        eprintln!("dealmesh-crm: --ttl {ttl:?}: expected e.g. 30m, 12h, 7d");
        return ExitCode::from(64);
    };
    let Some(secret) = std::env::var(dealmesh_auth::JWT_HS256_SECRET)
        .ok()
        .filter(|s| !s.is_empty())
    else {
        eprintln!(
            "dealmesh-crm: {} is not set",
            dealmesh_auth::JWT_HS256_SECRET
        );
        return ExitCode::from(64);
    };
    let mut claims = dealmesh_auth::Claims::new(sub, role, ttl);
    if role == dealmesh_auth::Role::Lp {
        claims.lp_id = Some(lp_id.unwrap_or_else(|| sub.to_owned()));
    }
    println!("{}", dealmesh_auth::mint_hs256(&secret, &claims));
    ExitCode::SUCCESS
}

fn client(server: String, token: Option<String>, call: Call) -> ExitCode {
    let Some(token) = token else {
        eprintln!("dealmesh-crm: --token (or DEALMESH_CRM_TOKEN) is required");
        return ExitCode::from(64);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => return runtime_error(&error),
    };
    let result = runtime.block_on(async move {
        let mut client = CrmServiceClient::connect(server).await?;
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
        fn authorized<T>(
            bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
            message: T,
        ) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            request
        }
        match call {
            Call::ListDeals {
                stage,
                query,
                recent,
                limit,
            } => {
                let response = client
                    .list_deals(authorized(
                        &bearer,
                        ListDealsRequest {
                            stages: stage,
                            query,
                            sort: if recent {
                                CrmDealSort::Recent
                            } else {
                                CrmDealSort::Score
                            } as i32,
                            page_size: limit,
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner();
                for deal in response.deals {
                    let score = deal.score.map_or("-".to_owned(), |s| format!("{s:.1}"));
                    println!(
                        "{}\t{}\t{}\tv{}\t{}",
                        deal.deal_id, deal.stage, score, deal.version, deal.name
                    );
                }
            }
            Call::MoveStage {
                deal,
                to,
                reason,
                idempotency_key,
            } => {
                let response = client
                    .move_stage(authorized(
                        &bearer,
                        MoveStageRequest {
                            command: Some(CrmCommand {
                                idempotency_key: idempotency_key
                                    .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                                deal_id: deal,
                                expected_version: None,
                            }),
                            to_stage: to,
                            reason,
                        },
                    ))
                    .await?
                    .into_inner();
                let result = response.result.unwrap_or_default();
                let deal = result.deal.unwrap_or_default();
                println!(
                    "deal {} now {} at version {} (event {})",
                    deal.deal_id, deal.stage, result.deal_version, result.event_id
                );
            }
        }
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(status) = error.downcast_ref::<tonic::Status>() {
                eprintln!("dealmesh-crm: {:?}: {}", status.code(), status.message());
                use tonic_types::StatusExt;
                for v in status
                    .get_details_bad_request()
                    .map(|b| b.field_violations)
                    .unwrap_or_default()
                {
                    eprintln!("  {}: {}", v.field, v.description);
                }
            } else {
                eprintln!("dealmesh-crm: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}
