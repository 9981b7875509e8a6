//! Turns the raw document into an [`InfraSpec`], collecting every problem with
//! its field path.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::limits::{self, MAX_COMMAND_BYTES, MAX_TEXT_BYTES};
use super::raw::{RawMigrations, RawProcess, RawServices, RawSpec, Scalar};
use super::*;
use crate::domain::{AppName, parse_duration};

#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<FieldError>);

impl Errors {
    pub(super) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_process_name(s: &str) -> bool {
    AppName::parse(s).is_ok() && s.len() <= 30
}

/// A folder inside the app's source: relative, no `..`, bounded.
fn migrations_dir(dir: String, errors: &mut Errors) -> Option<String> {
    const FIELD: &str = "migrations.dir";
    let dir = dir.trim().trim_end_matches('/').to_owned();
    let path = std::path::Path::new(&dir);
    let inside = !dir.is_empty()
        && dir.len() <= 255
        && path.is_relative()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
    if !inside {
        errors.push(
            FIELD,
            "must be a folder inside the app's source (relative, no .., at most 255 bytes)",
        );
        return None;
    }
    Some(dir)
}

fn non_empty(value: Option<String>, field: &str, errors: &mut Errors) -> Option<String> {
    match value.map(|v| v.trim().to_owned()) {
        Some(v) if !v.is_empty() => Some(v),
        _ => {
            errors.push(field, "is required and must not be empty");
            None
        }
    }
}

pub(super) fn duration(
    value: Option<Scalar>,
    default: Duration,
    field: &str,
    errors: &mut Errors,
) -> Duration {
    let Some(value) = value else { return default };
    match parse_duration(&value.into_string()) {
        Ok(d) if d > limits::MAX_DURATION => {
            errors.push(field, "must be at most 24h");
            default
        }
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            errors.push(field, "must be greater than zero");
            default
        }
        Err(e) => {
            errors.push(field, e);
            default
        }
    }
}

/// Pushes an error when `value` is longer than `max` bytes.
pub(super) fn bounded(value: &str, max: usize, field: &str, errors: &mut Errors) {
    if let Err(e) = limits::text(value, max) {
        errors.push(field, e);
    }
}

pub(super) fn validate(raw: RawSpec) -> Result<InfraSpec, SpecErrors> {
    let mut errors = Errors::default();

    let name = match raw.name.as_deref().map(AppName::parse) {
        Some(Ok(name)) => Some(name),
        Some(Err(e)) => {
            errors.push("name", e);
            None
        }
        None => {
            errors.push("name", "is required");
            None
        }
    };

    let repo = raw.repo.and_then(|r| {
        let url = non_empty(r.url, "repo.url", &mut errors)?;
        bounded(&url, MAX_TEXT_BYTES, "repo.url", &mut errors);
        let looks_like_repo = ["https://", "http://", "ssh://", "git://", "file://", "/"]
            .iter()
            .any(|p| url.starts_with(p))
            || (url.contains('@') && url.contains(':'));
        if !looks_like_repo {
            errors.push(
                "repo.url",
                format!("{url:?} is not a git URL (https://, ssh://, git@host:path, file:// or an absolute path)"),
            );
        }
        let branch = r.branch.unwrap_or_else(|| "main".into());
        if let Err(e) = crate::domain::GitRef::parse(&branch) {
            errors.push("repo.branch", e);
        }
        Some(Repo {
            url,
            branch,
            auto_deploy: r.auto_deploy,
        })
    });

    let build = {
        let b = raw.build;
        let dockerfile = b
            .as_ref()
            .and_then(|b| b.dockerfile.clone())
            .unwrap_or_else(|| "Dockerfile".into());
        bounded(&dockerfile, MAX_TEXT_BYTES, "build.dockerfile", &mut errors);
        if dockerfile.starts_with('/') || dockerfile.split('/').any(|part| part == "..") {
            errors.push(
                "build.dockerfile",
                "must be a path inside the repository (relative, no '..')",
            );
        }
        let test = b.and_then(|b| b.test).filter(|t| !t.trim().is_empty());
        if let Some(test) = &test {
            bounded(test, MAX_COMMAND_BYTES, "build.test", &mut errors);
        }
        Build { dockerfile, test }
    };

    if raw.processes.is_empty() {
        errors.push("processes", "at least one process is required");
    }
    if raw.processes.len() > limits::MAX_PROCESSES {
        // Validating each of thousands of processes would only repeat this.
        errors.push(
            "processes",
            format!(
                "at most {} processes per app (got {})",
                limits::MAX_PROCESSES,
                raw.processes.len()
            ),
        );
        return Err(SpecErrors(errors.0));
    }
    let mut processes = BTreeMap::new();
    for (pname, p) in raw.processes {
        let path = format!("processes.{pname}");
        if !is_process_name(&pname) {
            errors.push(
                &path,
                "process names must match ^[a-z0-9][a-z0-9-]*$ and be at most 30 characters",
            );
        }
        if let Some(process) = process(p, &path, &mut errors) {
            processes.insert(pname, process);
        }
    }

    let scheduled: Vec<&String> = processes
        .iter()
        .filter(|(_, p)| p.schedule.is_some())
        .map(|(n, _)| n)
        .collect();
    if let [_, second, ..] = scheduled.as_slice() {
        errors.push(
            format!("processes.{second}.schedule"),
            "an app has at most one scheduled process; split the others into their own apps",
        );
    }

    let services = services(raw.services, raw.infrastructure, &mut errors);

    let migrations = raw.migrations.and_then(|m| {
        let (command, dir, database) = match m {
            RawMigrations::Command(c) => (Some(c), None, None),
            RawMigrations::Table {
                command,
                dir,
                database,
            } => (command, dir, database),
        };
        let chosen = match (command, dir) {
            (Some(_), Some(_)) => {
                errors.push("migrations", "give either command or dir, not both");
                None
            }
            (None, Some(dir)) => migrations_dir(dir, &mut errors).map(Migrations::Dir),
            (command, None) => {
                let command = non_empty(command, "migrations.command", &mut errors)?;
                bounded(
                    &command,
                    MAX_COMMAND_BYTES,
                    "migrations.command",
                    &mut errors,
                );
                Some(Migrations::Command(command))
            }
        };
        if let Some(db) = database {
            let declared = services.postgres.as_ref().map(|p| p.database.as_str());
            if declared != Some(db.as_str()) {
                errors.push(
                    "migrations.database",
                    format!("{db:?} must match services.postgres.database"),
                );
            }
        } else if services.postgres.is_none() {
            errors.push(
                "migrations",
                "migrations need a database: declare services.postgres.database",
            );
        }
        chosen
    });

    if raw.env.len() > limits::MAX_ENV_ENTRIES {
        errors.push(
            "env",
            format!(
                "at most {} variables (got {})",
                limits::MAX_ENV_ENTRIES,
                raw.env.len()
            ),
        );
    }
    let mut env = BTreeMap::new();
    for (key, value) in raw.env {
        if !is_env_name(&key) {
            errors.push(
                format!("env.{key}"),
                "variable names must match ^[A-Za-z_][A-Za-z0-9_]*$",
            );
        }
        env.insert(key, value.into_string());
    }
    let env_bytes: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if env_bytes > limits::MAX_ENV_BYTES {
        errors.push(
            "env",
            format!(
                "names and values together must be at most {} bytes (got {env_bytes})",
                limits::MAX_ENV_BYTES
            ),
        );
    }
    if raw.secrets.len() > limits::MAX_SECRETS {
        errors.push(
            "secrets",
            format!(
                "at most {} secrets (got {})",
                limits::MAX_SECRETS,
                raw.secrets.len()
            ),
        );
    }

    let mut seen = BTreeSet::new();
    for (i, secret) in raw.secrets.iter().enumerate() {
        if !is_env_name(secret) {
            errors.push(
                format!("secrets[{i}]"),
                "secret names must match ^[A-Za-z_][A-Za-z0-9_]*$",
            );
        } else if !seen.insert(secret) {
            errors.push(format!("secrets[{i}]"), format!("{secret} is listed twice"));
        }
    }

    let deploy_policy = super::policy::policy(raw.deploy_policy, &mut errors);
    let keep = raw.snapshots.and_then(|s| s.keep).unwrap_or(5);
    if !(1..=1000).contains(&keep) {
        errors.push("snapshots.keep", "must be 1..1000");
    }
    let snapshots = super::Snapshots {
        keep: keep.clamp(1, 1000) as u32,
    };
    let endpoints = super::endpoints::endpoints(raw.endpoints, &mut errors);
    let previews =
        super::previews::previews(raw.previews, repo.is_some(), &raw.secrets, &mut errors);

    match (name, errors.0.is_empty()) {
        (Some(name), true) => Ok(InfraSpec {
            name,
            repo,
            build,
            processes,
            services,
            migrations,
            env,
            secrets: raw.secrets,
            deploy_policy,
            snapshots,
            endpoints,
            previews,
        }),
        _ => Err(SpecErrors(errors.0)),
    }
}

/// Databases (and, since an app's role is named after its database, roles)
/// that belong to the server itself.
const RESERVED_DATABASES: [&str; 3] = ["postgres", "template0", "template1"];

fn process(p: RawProcess, path: &str, errors: &mut Errors) -> Option<Process> {
    let before = errors.0.len();
    let port = match p.port {
        None => None,
        Some(port) if (1..=65535).contains(&port) => Some(port as u16),
        Some(_) => {
            errors.push(format!("{path}.port"), "must be 1..65535");
            None
        }
    };
    let replicas = match p.replicas {
        None => 1,
        Some(n) if (1..=limits::MAX_REPLICAS).contains(&n) => n as u32,
        Some(_) => {
            errors.push(format!("{path}.replicas"), "must be 1..100");
            1
        }
    };
    let health = p.health.and_then(|h| {
        let hp = format!("{path}.health");
        let hpath = non_empty(h.path, &format!("{hp}.path"), errors)?;
        bounded(&hpath, MAX_TEXT_BYTES, &format!("{hp}.path"), errors);
        if !hpath.starts_with('/') {
            errors.push(format!("{hp}.path"), "must start with '/'");
        }
        if port.is_none() {
            errors.push(&hp, "a health check needs the process to declare a port");
        }
        Some(Health {
            path: hpath,
            interval: duration(
                h.interval,
                Duration::from_secs(10),
                &format!("{hp}.interval"),
                errors,
            ),
            timeout: duration(
                h.timeout,
                Duration::from_secs(5),
                &format!("{hp}.timeout"),
                errors,
            ),
        })
    });
    let cron_policy = p
        .cron
        .map(|c| super::cron::policy(c, &format!("{path}.cron"), errors));
    let schedule = p.schedule.and_then(|expr| {
        let field = format!("{path}.schedule");
        if expr.len() > 256 {
            errors.push(field, "must be at most 256 bytes");
            return None;
        }
        match cron_schedule(&expr) {
            Ok(()) => Some(Schedule {
                expression: expr.trim().to_owned(),
                timezone: p.timezone.clone(),
                policy: cron_policy.clone().unwrap_or_default(),
            }),
            Err(e) => {
                errors.push(field, e);
                None
            }
        }
    });
    if cron_policy.is_some() && schedule.is_none() && errors.0.len() == before {
        errors.push(
            format!("{path}.cron"),
            "only applies to a process with a schedule",
        );
    }
    if let Some(tz) = &p.timezone {
        if tz.len() > 64 {
            errors.push(format!("{path}.timezone"), "must be at most 64 bytes");
        } else if tz.parse::<chrono_tz::Tz>().is_err() {
            errors.push(
                format!("{path}.timezone"),
                format!("{tz:?} is not an IANA timezone (e.g. Europe/Berlin)"),
            );
        } else if schedule.is_none() && errors.0.len() == before {
            errors.push(format!("{path}.timezone"), "only applies to a schedule");
        }
    }
    let function = p.function.map(|f| {
        let fp = format!("{path}.function");
        let memory_mb = match f.memory {
            None => 256,
            Some(m) if (16..=65536).contains(&m) => m as u32,
            Some(_) => {
                errors.push(format!("{fp}.memory"), "must be 16..65536 (MB)");
                256
            }
        };
        let concurrency = match f.concurrency {
            None => 10,
            Some(c) if (1..=limits::MAX_FUNCTION_CONCURRENCY).contains(&c) => c as u32,
            Some(_) => {
                errors.push(
                    format!("{fp}.concurrency"),
                    format!("must be 1..{}", limits::MAX_FUNCTION_CONCURRENCY),
                );
                10
            }
        };
        let warm = match f.warm {
            None => 0,
            Some(w) if (0..=limits::MAX_FUNCTION_WARM).contains(&w) => w as u32,
            Some(_) => {
                errors.push(
                    format!("{fp}.warm"),
                    format!("must be 0..{}", limits::MAX_FUNCTION_WARM),
                );
                0
            }
        };
        Function {
            timeout: duration(
                f.timeout,
                Duration::from_secs(30),
                &format!("{fp}.timeout"),
                errors,
            ),
            memory_mb,
            concurrency,
            warm,
        }
    });
    if schedule.is_some() && function.is_some() {
        errors.push(
            path,
            "a process is either scheduled or a function, not both",
        );
    }
    if (schedule.is_some() || function.is_some()) && p.command.is_none() {
        errors.push(
            format!("{path}.command"),
            "is required for scheduled and function processes",
        );
    }
    let command = p.command.filter(|c| !c.trim().is_empty());
    if let Some(command) = &command {
        bounded(
            command,
            MAX_COMMAND_BYTES,
            &format!("{path}.command"),
            errors,
        );
    }
    let memory_mb = match p.memory {
        None => None,
        Some(mb) if (16..=65536).contains(&mb) => Some(mb as u32),
        Some(_) => {
            errors.push(format!("{path}.memory"), "must be 16..65536 (MiB)");
            None
        }
    };
    (errors.0.len() == before).then_some(Process {
        port,
        command,
        health,
        replicas,
        schedule,
        function,
        memory_mb,
    })
}

/// Accepts 5 fields (minute precision) or 6 (with seconds), like the seeds.
pub fn cron_schedule(expr: &str) -> Result<(), String> {
    crate::domain::CronExpr::parse(expr, None).map(|_| ())
}

fn services(
    services: Option<RawServices>,
    infrastructure: Option<RawServices>,
    errors: &mut Errors,
) -> Services {
    let (raw, prefix) = match (services, infrastructure) {
        (Some(_), Some(_)) => {
            errors.push(
                "infrastructure",
                "declare services or infrastructure (its older name), not both",
            );
            return Services::default();
        }
        (Some(s), None) => (s, "services"),
        (None, Some(s)) => (s, "infrastructure"),
        (None, None) => return Services::default(),
    };
    let postgres = raw.postgres.and_then(|p| {
        let field = format!("{prefix}.postgres.database");
        let database = non_empty(p.database, &field, errors)?;
        let valid = database.len() <= 63
            && database
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && database
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            errors.push(
                field,
                "must match ^[a-z_][a-z0-9_]*$ and be at most 63 characters",
            );
        } else if RESERVED_DATABASES.contains(&database.as_str()) || database.starts_with("pg_") {
            errors.push(
                field,
                format!(
                    "{database} is reserved for the server (postgres, template0, template1, pg_*)"
                ),
            );
        }
        Some(Postgres { database })
    });
    let kv = raw.kv.and_then(|k| {
        let namespace = non_empty(k.namespace, &format!("{prefix}.kv.namespace"), errors)?;
        if namespace.len() > 63 {
            errors.push(format!("{prefix}.kv.namespace"), "must be at most 63 bytes");
        } else if !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            // It becomes the key pattern `<namespace>:*` of the app's ACL
            // user: a glob character would widen it to other apps' keys.
            errors.push(
                format!("{prefix}.kv.namespace"),
                "may hold only letters, digits, '_', '-' and '.'",
            );
        }
        Some(Kv { namespace })
    });
    let events = raw.events.map(|e| {
        if e.topics.len() > limits::MAX_TOPICS {
            errors.push(
                format!("{prefix}.events.topics"),
                format!(
                    "at most {} topics (got {})",
                    limits::MAX_TOPICS,
                    e.topics.len()
                ),
            );
            return Events { topics: Vec::new() };
        }
        let mut seen = BTreeSet::new();
        for (i, topic) in e.topics.iter().enumerate() {
            let field = format!("{prefix}.events.topics[{i}]");
            // The broker name is `<app>.<topic>`: Kafka's 249 less the
            // longest prefix an app name allows (63 + the dot).
            let ok = !topic.is_empty()
                && topic.len() <= 185
                && topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok {
                errors.push(
                    field,
                    "topics are 1..185 characters of [A-Za-z0-9._-] (each becomes <app>.<topic> on the brokers)",
                );
            } else if !seen.insert(topic) {
                errors.push(field, format!("{topic} is listed twice"));
            }
        }
        Events { topics: e.topics }
    });
    Services {
        postgres,
        kv,
        events,
    }
}
