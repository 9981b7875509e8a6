use super::*;

const FULL: &str = r#"
name: ledger
repo: {url: "https://example.com/acme/ledger.git", branch: main, autoDeploy: true}
build: {dockerfile: docker/Dockerfile, test: "make test"}
processes:
  web:
    port: 8080
    command: "./ledger serve"
    replicas: 2
    health: {path: /healthz, interval: 15s, timeout: 3s}
  nightly: {schedule: "30 2 * * *", timezone: Europe/Berlin, command: "./ledger reconcile"}
  export: {function: {timeout: 45s, memory: 384, concurrency: 3}, command: "./ledger export"}
services:
  postgres: {database: ledger_db}
  kv: {namespace: ledger}
  events: {topics: [ledger.events]}
migrations: {command: "./migrate up"}
env: {LOG_FORMAT: json, WORKERS: 4}
secrets: [STRIPE_API_KEY]
"#;

fn first_error(text: &str) -> FieldError {
    InfraSpec::parse(text).unwrap_err().first().clone()
}

#[test]
fn parses_every_field() {
    let spec = InfraSpec::parse(FULL).unwrap();
    assert_eq!(spec.name.as_str(), "ledger");
    assert!(spec.repo.as_ref().unwrap().auto_deploy);
    assert_eq!(spec.build.dockerfile, "docker/Dockerfile");
    let web = &spec.processes["web"];
    assert_eq!(web.port, Some(8080));
    assert_eq!(web.replicas, 2);
    assert_eq!(web.health.as_ref().unwrap().timeout, Duration::from_secs(3));
    let nightly = &spec.processes["nightly"];
    assert_eq!(
        nightly.schedule.as_ref().unwrap().timezone.as_deref(),
        Some("Europe/Berlin")
    );
    assert_eq!(
        spec.processes["export"]
            .function
            .as_ref()
            .unwrap()
            .memory_mb,
        384
    );
    assert_eq!(
        spec.processes["export"]
            .function
            .as_ref()
            .unwrap()
            .concurrency,
        3
    );
    assert_eq!(
        spec.services.postgres.as_ref().unwrap().database,
        "ledger_db"
    );
    assert_eq!(spec.env["WORKERS"], "4");
    assert_eq!(spec.services().count(), 1);
}

#[test]
fn infrastructure_is_an_alias_and_migrations_may_be_a_string() {
    let spec = InfraSpec::parse(
        "name: a\nprocesses: {web: {port: 80}}\ninfrastructure: {postgres: {database: a_db}}\nmigrations: ./up\n",
    )
    .unwrap();
    assert_eq!(spec.services.postgres.unwrap().database, "a_db");
    assert_eq!(spec.migrations.unwrap(), Migrations::Command("./up".into()));
}

#[test]
fn migrations_name_a_command_or_a_folder_inside_the_source() {
    let spec = InfraSpec::parse(
        "name: a\nprocesses: {web: {port: 80}}\nservices: {postgres: {database: a_db}}\nmigrations: {dir: db/changes/}\n",
    )
    .unwrap();
    assert_eq!(
        spec.migrations.unwrap(),
        Migrations::Dir("db/changes".into())
    );
    for bad in ["../up", "/etc", "db/../../x", ""] {
        let e = first_error(&format!(
            "name: a\nprocesses: {{web: {{port: 80}}}}\nservices: {{postgres: {{database: a_db}}}}\nmigrations: {{dir: {bad:?}}}\n"
        ));
        assert_eq!(e.field, "migrations.dir", "{bad}");
    }
    let e = first_error(
        "name: a\nprocesses: {web: {port: 80}}\nservices: {postgres: {database: a_db}}\nmigrations: {dir: x, command: y}\n",
    );
    assert_eq!(e.field, "migrations");
}

#[test]
fn errors_name_the_field() {
    let e = first_error("name: a\nprocesses: {web: {port: 70000}}\n");
    assert_eq!(e.field, "processes.web.port");
    assert_eq!(e.message, "must be 1..65535");

    let e = first_error("name: Bad_Name\nprocesses: {web: {port: 80}}\n");
    assert_eq!(e.field, "name");

    let e = first_error("name: a\nprocesses: {web: {port: \"eighty\"}}\n");
    assert_eq!(e.field, "processes.web.port");

    let e = first_error("name: a\nprocesses: {web: {port: 80, helth: {}}}\n");
    assert_eq!(e.field, "processes.web.helth");
    assert!(e.message.contains("unknown field `helth`"), "{}", e.message);

    let e = first_error("name: a\nprocesses: {job: {schedule: \"* * *\", command: x}}\n");
    assert_eq!(e.field, "processes.job.schedule");

    let e = first_error(
        "name: a\nprocesses: {job: {schedule: \"* * * * *\", timezone: Mars/Base, command: x}}\n",
    );
    assert_eq!(e.field, "processes.job.timezone");

    let e = first_error("name: a\nprocesses: {web: {health: {path: /h}}}\n");
    assert_eq!(e.field, "processes.web.health");

    let e = first_error("name: a\nprocesses: {}\n");
    assert_eq!(e.field, "processes");

    let e = first_error("name: a\nprocesses: {web: {port: 1}}\nmigrations: ./up\n");
    assert_eq!(e.field, "migrations");

    let e = first_error(
        "name: a\nprocesses: {web: {port: 1}}\nservices: {postgres: {database: \"x-y\"}}\n",
    );
    assert_eq!(e.field, "services.postgres.database");

    let e = first_error("- just\n- a list\n");
    assert_eq!(e.field, "");
}

#[test]
fn collects_every_error() {
    let errs = InfraSpec::parse("name: a\nprocesses: {web: {port: 0, replicas: 0}}\n").unwrap_err();
    let fields: Vec<_> = errs.0.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["processes.web.port", "processes.web.replicas"]);
}

#[test]
fn six_field_schedules_have_seconds() {
    assert!(validate::cron_schedule("*/5 * * * * *").is_ok());
    assert!(
        validate::cron_schedule("0 0 31 2 *")
            .unwrap_err()
            .contains("never fires")
    );
    assert!(validate::cron_schedule("61 * * * *").is_err());
}

#[test]
fn a_functions_concurrency_defaults_to_ten_and_is_bounded() {
    let spec =
        |c: &str| format!("name: fn\nprocesses:\n  run: {{command: cat, function: {{{c}}}}}\n");
    let parsed = InfraSpec::parse(&spec("")).unwrap();
    let f = parsed.processes["run"].function.as_ref().unwrap();
    assert_eq!(
        (f.concurrency, f.memory_mb, f.timeout),
        (10, 256, Duration::from_secs(30))
    );
    for bad in ["concurrency: 0", "concurrency: 101", "concurrency: -1"] {
        let err = first_error(&spec(bad));
        assert_eq!(err.field, "processes.run.function.concurrency", "{bad}");
    }
    assert_eq!(
        first_error(&spec("warm: 11")).field,
        "processes.run.function.warm"
    );
    let warm = InfraSpec::parse(&spec("warm: 2")).unwrap();
    assert_eq!(warm.processes["run"].function.as_ref().unwrap().warm, 2);
}
