//! Issue 23 (part 1): `shoal stack` on a real daemon and Docker, one node on 127.0.160.1 with
//! service discovery on its own network `shoal-dt-160` (10.214.160.0/24).
//!
//! A compose file with a web service and a database-like service that reads its password
//! from `/run/secrets/db_password` and answers with its digest: the web task reaches it by its
//! compose name `db`; a redeploy scales web (no rolling update), a changed image rolls db, a
//! service left out of the file stays until `--prune`, and `stack rm` leaves no service,
//! secret, config or container. Invalid files (bad YAML, an unknown service in `depends_on`,
//! a missing secret) are one line naming the place, and deploy nothing.
//!
//! Cleaning up: the network guard, a [`ClusterContainers`] guard, a
//! [`shoal_tests::SecretDirs`] guard and the [`Daemon`] (dropped also when the test fails),
//! and a guard for the second image tag. Needs Docker and the test
//! image: skips without them and fails under `SHOAL_REQUIRE_DOCKER=1`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use shoal_tests::{
    ClusterContainers, Daemon, cluster_id, docker, docker_ready, poll_until, service_containers,
    start_cluster_with, tasks,
};

const IMAGE: &str = shoal_tests::TEST_IMAGE;
/// A second name of the test image: a changed `image:` without a registry.
const IMAGE_V2: &str = "shoal-test/busybox:stack-v2";
const NET: u8 = 160;
const DEADLINE: Duration = Duration::from_secs(60);

/// Removes the Docker network and the second image tag.
struct Guard;

impl Guard {
    fn new() -> Result<Guard> {
        let _ = docker(&["network", "rm", &format!("shoal-dt-{NET}")]);
        docker(&["tag", IMAGE, IMAGE_V2])?;
        Ok(Guard)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &format!("shoal-dt-{NET}")]);
        let _ = docker(&["rmi", IMAGE_V2]);
    }
}

/// The compose file: `web` (`web` tasks, no port: a client only) and `db` (image `db_image`,
/// the secret, an HTTP answer with the password's digest on an exposed port), `web` optional.
fn compose(web: Option<u32>, db_image: &str) -> String {
    let web = web.map_or(String::new(), |n| {
        format!(
            r#"
  web:
    image: ${{IMAGE}}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
    depends_on: [db]
    networks: [front]
    deploy:
      replicas: {n}
"#
        )
    });
    format!(
        r#"version: "3.8"
services:{web}
  db:
    image: {db_image}
    command:
      - sh
      - -c
      - >-
        mkdir -p /www;
        echo "sha $$(sha256sum /run/secrets/db_password | cut -c1-64)" > /www/index.html;
        trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait
    expose: ["80"]
    secrets: [db_password]
    logging:
      driver: none
secrets:
  db_password:
    file: ./db_password.txt
networks:
  front: {{}}
"#
    )
}

fn wait_running(d: &Daemon, service: &str, n: usize, version: u64) -> Result<()> {
    poll_until(
        &format!("{n} tasks of {service} v{version}"),
        DEADLINE,
        || {
            let rows = tasks(d, service)?;
            let run = rows
                .iter()
                .filter(|t| {
                    t["state"] == "running"
                        && t["desired_state"] == "running"
                        && t["version"] == version
                })
                .count();
            ensure!(run == n, "{run} of {n} running: {rows:?}");
            Ok(Some(()))
        },
    )
}

/// What `web`'s container gets from `http://db/`.
fn ask_db(cluster: &str) -> Result<String> {
    poll_until("web to reach db by name", DEADLINE, || {
        let web = service_containers(cluster, "home_web")?;
        let id = &web.first().context("no web container")?.id;
        let out = docker(&[
            "exec",
            id,
            "sh",
            "-c",
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 db 80 | tail -n 1",
        ])?;
        let out = out.trim().to_string();
        ensure!(out.starts_with("sha "), "answer: {out:?}");
        Ok(Some(out))
    })
}

fn deploy(d: &Daemon, file: &Path, extra: &[&str], stack: &str) -> Result<(String, String)> {
    let f = file.display().to_string();
    let mut args = vec!["stack", "deploy", "-c", f.as_str()];
    args.extend(extra);
    args.push(stack);
    let out = d.cli(&args)?;
    ensure!(
        out.status.success(),
        "`shoal {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn service_names(d: &Daemon) -> Result<Vec<String>> {
    Ok(d.ok(&["service", "ls", "--format", "{{.Name}}"])?
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

#[test]
fn issue_23_a_compose_stack_deploys_scales_rolls_prunes_and_goes() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let _guard = Guard::new()?;
    let (ms, _) = start_cluster_with("st-", NET, 1, 1, 0, |d| {
        d.extra.extend([
            "--network".to_string(),
            format!("shoal-dt-{NET}"),
            "--network-subnet".to_string(),
            format!("10.214.{NET}.0/24"),
        ]);
        Ok(())
    })?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let m_id = shoal_tests::node_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    let _secret_dirs = shoal_tests::SecretDirs::of(&ms)?;
    let dir = tempfile::tempdir()?;
    let password = "correct horse battery staple";
    std::fs::write(dir.path().join("db_password.txt"), password)?;
    std::fs::write(dir.path().join(".env"), format!("IMAGE={IMAGE}\n"))?;
    let file = dir.path().join("compose.yml");
    let sha_of_password = || -> Result<String> {
        let out = Command::new("sha256sum")
            .arg(dir.path().join("db_password.txt"))
            .output()?;
        Ok(format!(
            "sha {}",
            String::from_utf8_lossy(&out.stdout).get(..64).unwrap_or("")
        ))
    };
    let want_sha = sha_of_password()?;

    // Deploy: NAME_SERVICE names, one warning line naming what is not supported.
    std::fs::write(&file, compose(Some(1), IMAGE))?;
    let (out, err) = deploy(m, &file, &[], "home")?;
    ensure!(
        out.contains("Creating service home_web") && out.contains("Creating service home_db"),
        "deploy said:\n{out}"
    );
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("unsupported")).collect();
    ensure!(
        warnings.len() == 1
            && warnings[0].contains("services.db.logging")
            && warnings[0].contains("networks"),
        "the warning line: {err}"
    );
    wait_running(m, "home_db", 1, 1)?;
    wait_running(m, "home_web", 1, 1)?;
    let ls = m.ok(&["stack", "ls"])?;
    ensure!(ls.contains("home"), "stack ls:\n{ls}");
    let svcs = m.ok(&["stack", "services", "home"])?;
    ensure!(
        svcs.contains("home_web") && svcs.contains("home_db"),
        "stack services:\n{svcs}"
    );
    // web reaches db by its compose name; db read the secret.
    ensure!(ask_db(&cluster)? == want_sha, "db did not read the secret");

    // Redeploy: web scaled to 2 without a rolling update (its tasks stay version 1).
    std::fs::write(&file, compose(Some(2), IMAGE))?;
    deploy(m, &file, &[], "home")?;
    wait_running(m, "home_web", 2, 1)?;
    // db's image changed: a rolling update to version 2 on the new image, still reached by name.
    std::fs::write(&file, compose(Some(2), IMAGE_V2))?;
    let (out, _) = deploy(m, &file, &[], "home")?;
    ensure!(out.contains("Updating service home_db"), "{out}");
    wait_running(m, "home_db", 1, 2)?;
    let db = service_containers(&cluster, "home_db")?;
    let image = docker(&["inspect", "-f", "{{.Config.Image}}", &db[0].id])?;
    ensure!(image.trim() == IMAGE_V2, "db runs {image}");
    ensure!(ask_db(&cluster)? == want_sha);
    // A changed password: a new secret (numbered, no digest of it kept anywhere) and a
    // rolling update of db to read it.
    let inspect = m.ok(&["secret", "inspect", "home_db_password"])?;
    ensure!(
        !inspect.contains("digest"),
        "a secret's labels hold a digest: {inspect}"
    );
    std::fs::write(dir.path().join("db_password.txt"), "a new password")?;
    let (out, _) = deploy(m, &file, &[], "home")?;
    ensure!(
        out.contains("Creating secret home_db_password_2")
            && out.contains("Updating service home_db"),
        "{out}"
    );
    wait_running(m, "home_db", 1, 3)?;
    let new_sha = sha_of_password()?;
    ensure!(
        ask_db(&cluster)? == new_sha,
        "db did not read the new secret"
    );
    // Unchanged again: nothing to do.
    let (out, _) = deploy(m, &file, &[], "home")?;
    ensure!(
        !out.contains("Creating") && !out.contains("Updating"),
        "{out}"
    );
    let ps = m.ok(&["stack", "ps", "home"])?;
    ensure!(
        ps.contains("home_db") && ps.contains("home_web"),
        "stack ps:\n{ps}"
    );

    // web left the file: kept without --prune, removed with it.
    std::fs::write(&file, compose(None, IMAGE_V2))?;
    deploy(m, &file, &[], "home")?;
    ensure!(service_names(m)?.contains(&"home_web".to_string()));
    deploy(m, &file, &["--prune"], "home")?;
    ensure!(
        service_names(m)? == ["home_db"],
        "after --prune: {:?}",
        service_names(m)?
    );

    // Invalid files: one line naming the file, line and key; nothing deployed.
    let bad = dir.path().join("bad.yml");
    let cases = [
        ("services:\n  a:\n    image: x\n   bad: [\n", "bad.yml:"),
        (
            "services:\n  a:\n    image: x\n    depends_on: [nosuch]\n",
            "bad.yml:4: services.a.depends_on",
        ),
        (
            "services:\n  a:\n    image: x\n    secrets: [nosuch]\n",
            "bad.yml:4: services.a.secrets",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&bad, text)?;
        let f = bad.display().to_string();
        let err = m.fails(&["stack", "deploy", "-c", &f, "broken"])?;
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        ensure!(
            lines.len() == 1 && lines[0].contains(want),
            "for\n{text}\nwant one line with `{want}`, got:\n{err}"
        );
    }
    ensure!(
        service_names(m)? == ["home_db"],
        "an invalid file deployed something: {:?}",
        service_names(m)?
    );

    // stack rm: no service, secret or container left.
    let out = m.ok(&["stack", "rm", "home"])?;
    ensure!(out.contains("home_db"), "stack rm said:\n{out}");
    ensure!(service_names(m)?.is_empty(), "{:?}", service_names(m)?);
    poll_until("the stack's secret removed", DEADLINE, || {
        let ls = m.ok(&["secret", "ls"])?;
        ensure!(!ls.contains("home_db_password"), "secret ls:\n{ls}");
        ensure!(
            !Path::new("/dev/shm")
                .join(format!("shoal-secrets-{m_id}"))
                .exists(),
            "the node's secrets directory is left"
        );
        Ok(Some(()))
    })?;
    poll_until("the stack's containers removed", DEADLINE, || {
        let left = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=shoal.cluster={cluster}"),
        ])?;
        ensure!(left.trim().is_empty(), "containers left: {left}");
        Ok(Some(()))
    })?;
    let none = m.fails(&["stack", "rm", "home"])?;
    ensure!(none.contains("nothing found in stack: home"), "{none}");
    Ok(())
}
