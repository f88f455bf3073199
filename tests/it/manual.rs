//! Shell completions and man pages generated from the command-line
//! definitions, through the real binary: bash completing a flag as it would
//! on Tab, every shell's script naming the flags, roff pages for every
//! command.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::run_binary_within;

const LIMIT: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn bash_completion_offers_the_flags() {
    let script = run_binary_within(&["completions", "bash"], LIMIT);
    assert!(script.status.success(), "{script:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fetchproxy.bash");
    std::fs::write(&path, &script.stdout).expect("write script");
    // What bash does on `fetchproxy fetch --prox<Tab>`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            "source \"$1\" && COMP_WORDS=(fetchproxy fetch --prox) && COMP_CWORD=2 \
             && COMP_LINE='fetchproxy fetch --prox' && COMP_POINT=${#COMP_LINE} \
             && _fetchproxy fetchproxy --prox fetch && printf '%s\\n' \"${COMPREPLY[@]}\"",
        )
        .arg("bash")
        .arg(&path)
        .output()
        .expect("run bash");
    assert!(out.status.success(), "{out:?}");
    let offered = text(&out.stdout);
    let mut words: Vec<&str> = offered.lines().collect();
    words.sort_unstable();
    assert_eq!(words, ["--proxy", "--proxy-user"], "{offered}");
}

#[test]
fn completions_exist_for_every_shell_clap_knows() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run_binary_within(&["completions", shell], LIMIT);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = text(&out.stdout);
        for word in [
            "proxy-user",
            "user-agent",
            "stdout",
            "allow-dest",
            "hash-password",
        ] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    let out = run_binary_within(&["completions", "tcsh"], LIMIT);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("possible values"), "{out:?}");
}

#[test]
fn man_pages_are_generated_from_the_flags() {
    let out = run_binary_within(&["manpage"], LIMIT);
    assert!(out.status.success(), "{out:?}");
    let page = text(&out.stdout);
    assert!(page.contains(".TH fetchproxy 1"), "{page}");
    assert!(page.contains(".SH NAME"), "{page}");
    assert!(page.contains("fetchproxy\\-fetch(1)"), "{page}");

    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_binary_within(
        &["manpage", "--out-dir", dir.path().to_str().expect("utf-8")],
        LIMIT,
    );
    assert!(out.status.success(), "{out:?}");
    let pages = names_in(dir.path());
    for want in [
        "fetchproxy.1",
        "fetchproxy-fetch.1",
        "fetchproxy-serve.1",
        "fetchproxy-manpage.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} not in {pages:?}");
    }
    let fetch = std::fs::read_to_string(dir.path().join("fetchproxy-fetch.1")).expect("read");
    for flag in [
        "\\-\\-proxy\\-user",
        "\\-\\-header",
        "\\-\\-stdout",
        "\\-\\-user\\-agent",
    ] {
        assert!(fetch.contains(flag), "{flag} not in fetchproxy-fetch.1");
    }
    // Each page says what its exit status means.
    assert!(page.contains(".SH \"EXIT STATUS\""), "{page}");
    assert!(fetch.contains(".SH \"EXIT STATUS\"\n.TP\n0\n"), "{fetch}");
    assert!(fetch.contains("\n130, 143\n"), "{fetch}");
    let serve = std::fs::read_to_string(dir.path().join("fetchproxy-serve.1")).expect("read");
    assert!(serve.contains("grace period ran out"), "{serve}");

    // A directory that is not there yet is made, as `fetch --out-dir` does.
    let missing = dir.path().join("no/such/dir");
    let out = run_binary_within(
        &["manpage", "--out-dir", missing.to_str().expect("utf-8")],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(missing.join("fetchproxy.1").is_file());

    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").expect("write");
    let under_a_file = file.join("sub");
    let out = run_binary_within(
        &[
            "manpage",
            "--out-dir",
            under_a_file.to_str().expect("utf-8"),
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("fetchproxy: --out-dir "),
        "{out:?}"
    );
}

#[test]
fn one_command_s_page_is_printed_on_its_own() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_binary_within(
        &["manpage", "--out-dir", dir.path().to_str().expect("utf-8")],
        LIMIT,
    );
    assert!(out.status.success(), "{out:?}");
    let out = run_binary_within(&["manpage", "fetch"], LIMIT);
    assert!(out.status.success(), "{out:?}");
    let written = std::fs::read_to_string(dir.path().join("fetchproxy-fetch.1")).expect("read");
    assert_eq!(text(&out.stdout), written, "the same page either way");

    let out = run_binary_within(&["manpage", "fecth"], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = text(&out.stderr);
    assert!(said.contains("no command \"fecth\""), "{said}");
    assert!(said.contains("serve, fetch"), "{said}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn a_reader_that_leaves_early_ends_the_output_quietly() {
    // `fetchproxy manpage | head -1`: the pipe closes under the writer.
    for args in [&["manpage"][..], &["completions", "bash"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fetchproxy"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fetchproxy");
        // Closed before the first write: every write fails at once.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait for fetchproxy");
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
}
