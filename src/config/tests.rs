use super::*;

fn from_file(text: &str, args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
    let file = parse_file(text).map_err(|message| ConfigError::Parse {
        path: PathBuf::from("test.toml"),
        message,
    })?;
    resolve(args, file)
}

fn invalid_key(result: Result<ServeConfig, ConfigError>) -> (&'static str, String, String) {
    match result {
        Err(ConfigError::Invalid { key, value, reason }) => (key, value, reason),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn parse_message(text: &str) -> String {
    match from_file(text, &ServeArgs::default()) {
        Err(err @ ConfigError::Parse { .. }) => err.to_string(),
        other => panic!("expected Parse, got {other:?}"),
    }
}

#[test]
fn example_file_documents_exactly_the_defaults() {
    let example = include_str!("../../config.example.toml");
    let config = from_file(example, &ServeArgs::default()).expect("example parses");
    assert_eq!(config, ServeConfig::default());
}

#[test]
fn example_file_mentions_every_key() {
    let example = include_str!("../../config.example.toml");
    for key in [
        "listen",
        "workers",
        "queue",
        "allow_dest",
        "allow_clients",
        "dest_ports",
        "connect_ports",
        "grace",
        "connect_timeout",
        "upstream_timeout",
        "idle_timeout",
        "header_timeout",
        "tunnel_idle_timeout",
        "max_header_bytes",
        "max_url_bytes",
        "max_body_bytes",
        "max_connections",
        "max_conns_per_client",
        "max_tunnels",
        "via_name",
        "log_level",
    ] {
        assert!(
            example.contains(&format!("\n{key} = ")) || example.contains(&format!("# {key} = ")),
            "{key}"
        );
    }
    for line in ["# [[users]]", "# name = ", "# password_hash = "] {
        assert!(example.contains(line), "{line}");
    }
}

#[test]
fn defaults_match_the_design() {
    let config = ServeConfig::default();
    assert_eq!(config.workers.get(), 32);
    assert_eq!(config.queue.get(), 512);
    assert_eq!(config.listen, vec!["127.0.0.1:8080".parse().expect("addr")]);
    assert_eq!(config.max_header_bytes, 65536);
    assert_eq!(config.tunnel_idle_timeout, Duration::from_secs(300));
    assert!(is_token(&config.via_name), "{}", config.via_name);
}

#[test]
fn flags_override_file_which_overrides_defaults() {
    let text =
        "workers = 8\ngrace = \"1m\"\nlisten = [\"127.0.0.1:9000\"]\nidle_timeout = \"5s\"\n";
    let from_file_only = from_file(text, &ServeArgs::default()).expect("valid");
    assert_eq!(from_file_only.workers.get(), 8);
    assert_eq!(
        from_file_only.queue.get(),
        QUEUE_PER_WORKER * 8,
        "queue follows the file's workers"
    );
    assert_eq!(from_file_only.grace, Duration::from_secs(60));
    assert_eq!(from_file_only.idle_timeout, Duration::from_secs(5));
    assert_eq!(from_file_only.connect_timeout, Duration::from_secs(10));

    let args = ServeArgs {
        workers: Some(2),
        listen: vec!["[::1]:0".parse().expect("addr")],
        idle_timeout: Some(Duration::from_secs(1)),
        ..ServeArgs::default()
    };
    let config = from_file(text, &args).expect("valid");
    assert_eq!(config.workers.get(), 2);
    assert_eq!(
        config.queue.get(),
        QUEUE_PER_WORKER * 2,
        "queue follows the flag's workers"
    );
    assert_eq!(config.listen, args.listen);
    assert_eq!(config.idle_timeout, Duration::from_secs(1));
    assert_eq!(config.grace, Duration::from_secs(60), "file still applies");
}

#[test]
fn an_explicit_queue_wins_over_four_times_workers() {
    let args = ServeArgs {
        queue: Some(5),
        ..ServeArgs::default()
    };
    let config = from_file("workers = 8\n", &args).expect("valid");
    assert_eq!(config.queue.get(), 5);
    let config = from_file("workers = 8\nqueue = 3\n", &ServeArgs::default()).expect("valid");
    assert_eq!(config.queue.get(), 3);
}

#[test]
fn unknown_key_is_a_parse_error_naming_key_and_line() {
    let message = parse_message("workers = 4\nwokrers = 8\n");
    assert!(message.contains("wokrers"), "{message}");
    assert!(message.contains("line 2"), "{message}");
    assert!(!message.contains("key workers"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn wrong_type_is_a_parse_error_naming_the_key() {
    let message = parse_message("\nworkers = \"many\"\n");
    assert!(message.contains("workers"), "{message}");
    assert!(message.contains("line 2"), "{message}");
    let message = parse_message("listen = \"127.0.0.1:80\"\n");
    assert!(message.contains("listen"), "{message}");
    let message = parse_message("dest_ports = [\n  80,\n  true,\n]\n");
    // serde reports an untagged mismatch at the array, which starts on line 1.
    assert!(message.contains("line 1, key dest_ports"), "{message}");
}

#[test]
fn bad_duration_names_key_and_value() {
    let err = from_file("grace = \"30 parsecs\"\n", &ServeArgs::default()).expect_err("bad");
    assert!(
        err.to_string().starts_with("grace = \"30 parsecs\": "),
        "{err}"
    );
    let (key, _, _) = invalid_key(from_file(
        "connect_timeout = \"0s\"\n",
        &ServeArgs::default(),
    ));
    assert_eq!(key, "connect_timeout");
    let args = ServeArgs {
        header_timeout: Some(Duration::ZERO),
        ..ServeArgs::default()
    };
    let (key, _, _) = invalid_key(from_file("", &args));
    assert_eq!(key, "--header-timeout");
}

#[test]
fn zero_workers_is_refused_under_the_name_used() {
    let (key, value, _) = invalid_key(from_file("workers = 0\n", &ServeArgs::default()));
    assert_eq!((key, value.as_str()), ("workers", "0"));
    let args = ServeArgs {
        workers: Some(0),
        ..ServeArgs::default()
    };
    let (key, _, _) = invalid_key(from_file("workers = 4\n", &args));
    assert_eq!(key, "--workers");
    let (key, _, _) = invalid_key(from_file("workers = 5000\n", &ServeArgs::default()));
    assert_eq!(key, "workers");
    let (key, _, _) = invalid_key(from_file("queue = 0\n", &ServeArgs::default()));
    assert_eq!(key, "queue");
}

#[test]
fn bad_cidr_and_addresses_name_key_and_value() {
    let (key, value, _) = invalid_key(from_file(
        "allow_dest = [\"10.0.0.0/33\"]\n",
        &ServeArgs::default(),
    ));
    assert_eq!((key, value.as_str()), ("allow_dest", "10.0.0.0/33"));
    let (key, _, _) = invalid_key(from_file(
        "allow_clients = [\"localnet\"]\n",
        &ServeArgs::default(),
    ));
    assert_eq!(key, "allow_clients");
    let (key, value, _) = invalid_key(from_file(
        "listen = [\"localhost:80\"]\n",
        &ServeArgs::default(),
    ));
    assert_eq!((key, value.as_str()), ("listen", "localhost:80"));
    let (key, _, _) = invalid_key(from_file("listen = []\n", &ServeArgs::default()));
    assert_eq!(key, "listen");
    let (key, _, _) = invalid_key(from_file("allow_clients = []\n", &ServeArgs::default()));
    assert_eq!(key, "allow_clients");
}

#[test]
fn ports_parse_from_numbers_and_ranges() {
    let config = from_file(
        "dest_ports = [80, \"8000-8999\"]\nconnect_ports = [443, 8443]\n",
        &ServeArgs::default(),
    )
    .expect("valid");
    assert_eq!(
        config.dest_ports,
        vec![
            PortRange::single(80),
            PortRange {
                first: 8000,
                last: 8999
            }
        ]
    );
    assert_eq!(config.connect_ports, vec![443, 8443]);
    for bad in [
        "dest_ports = [0]",
        "dest_ports = [70000]",
        "dest_ports = [\"200-100\"]",
        "dest_ports = []",
    ] {
        let (key, _, _) = invalid_key(from_file(bad, &ServeArgs::default()));
        assert_eq!(key, "dest_ports", "{bad}");
    }
    let (key, _, _) = invalid_key(from_file("connect_ports = [0]", &ServeArgs::default()));
    assert_eq!(key, "connect_ports");
    let args = ServeArgs {
        connect_ports: vec![0],
        ..ServeArgs::default()
    };
    let (key, _, _) = invalid_key(from_file("", &args));
    assert_eq!(key, "--connect-port");
}

#[test]
fn limits_are_checked_against_each_other() {
    let (key, _, reason) = invalid_key(from_file(
        "max_header_bytes = 2048\nmax_url_bytes = 4096\n",
        &ServeArgs::default(),
    ));
    assert_eq!(key, "max_url_bytes");
    assert!(reason.contains("2048"), "{reason}");
    let (key, _, _) = invalid_key(from_file("max_header_bytes = 100\n", &ServeArgs::default()));
    assert_eq!(key, "max_header_bytes");
    let (key, _, _) = invalid_key(from_file("max_connections = 500\n", &ServeArgs::default()));
    assert_eq!(
        key, "max_tunnels",
        "the default 1000 tunnels exceed 500 connections"
    );
    let (key, _, _) = invalid_key(from_file("max_connections = 0\n", &ServeArgs::default()));
    assert_eq!(key, "max_connections");
    let (key, _, _) = invalid_key(from_file("max_body_bytes = 0\n", &ServeArgs::default()));
    assert_eq!(key, "max_body_bytes");
    let config = from_file("max_body_bytes = 1000\n", &ServeArgs::default()).expect("valid");
    assert_eq!(config.max_body_bytes, Some(1000));
}

#[test]
fn via_name_and_log_level_are_checked() {
    let (key, _, _) = invalid_key(from_file(
        "via_name = \"two words\"\n",
        &ServeArgs::default(),
    ));
    assert_eq!(key, "via_name");
    let config = from_file(
        "via_name = \"proxy-1.example\"\nlog_level = \"DEBUG\"\n",
        &ServeArgs::default(),
    )
    .expect("valid");
    assert_eq!(config.via_name, "proxy-1.example");
    assert_eq!(config.log_level, log::LevelFilter::Debug);
    let (key, value, _) = invalid_key(from_file("log_level = \"loud\"\n", &ServeArgs::default()));
    assert_eq!((key, value.as_str()), ("log_level", "loud"));
}

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$1Lj8XbtjgKpPhZe9BbR3v0p+ROxh6hV3kdEc4S1bfqc";

#[test]
fn users_are_read_from_users_tables() {
    let text = format!(
        "[[users]]\nname = \"alice\"\npassword_hash = \"{HASH}\"\n\n[[users]]\nname = \"bob\"\npassword_hash = \"{HASH}\"\n"
    );
    let config = from_file(&text, &ServeArgs::default()).expect("valid");
    let names: Vec<&str> = config.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(
        !format!("{config:?}").contains("c2FsdH"),
        "hashes stay out of Debug"
    );
}

#[test]
fn bad_users_name_the_key_but_never_echo_the_hash() {
    let user = |name: &str, hash: &str| {
        let text = format!("[[users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\n");
        match from_file(&text, &ServeArgs::default()) {
            Err(err @ ConfigError::User { .. }) => err.to_string(),
            other => panic!("expected User, got {other:?}"),
        }
    };
    let message = user("alice", "plain-password");
    assert!(
        message.contains("password_hash") && message.contains("alice"),
        "{message}"
    );
    assert!(!message.contains("plain-password"), "{message}");
    let message = user("alice", &HASH.replace("argon2id", "argon2i"));
    assert!(message.contains("argon2id"), "{message}");
    assert!(user("a:b", HASH).contains("name"));
    assert!(user("", HASH).contains("name"));
    let twice = format!(
        "[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n"
    );
    let err = from_file(&twice, &ServeArgs::default()).expect_err("duplicate");
    assert!(err.to_string().contains("twice"), "{err}");
    let message = parse_message("[[users]]\nname = \"a\"\npassword = \"x\"\n");
    assert!(message.contains("password"), "{message}");
}

#[test]
fn only_settings_outside_the_rules_need_a_restart() {
    let running = ServeConfig::default();
    let mut fresh = running.clone();
    fresh.allow_dest = vec!["127.0.0.0/8".parse().expect("cidr")];
    fresh.connect_ports = vec![8443];
    assert!(keys_needing_restart(&running, &fresh).is_empty());
    fresh.workers = NonZeroUsize::new(3).expect("not zero");
    fresh.idle_timeout = Duration::from_secs(1);
    assert_eq!(
        keys_needing_restart(&running, &fresh),
        ["workers", "idle_timeout"]
    );
}

#[test]
fn load_reads_the_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fetchproxy.toml");
    std::fs::write(&path, "workers = 3\n").expect("write config");
    let args = ServeArgs {
        config: Some(path.clone()),
        ..ServeArgs::default()
    };
    assert_eq!(ServeConfig::load(&args).expect("valid").workers.get(), 3);

    std::fs::write(&path, "workers = [\n").expect("write config");
    let err = ServeConfig::load(&args).expect_err("broken toml");
    assert!(err.to_string().contains("fetchproxy.toml"), "{err}");

    let missing = ServeArgs {
        config: Some(dir.path().join("absent.toml")),
        ..ServeArgs::default()
    };
    assert!(matches!(
        ServeConfig::load(&missing),
        Err(ConfigError::Read { .. })
    ));
    assert!(ServeConfig::load(&ServeArgs::default()).is_ok());
}
