//! The Kubernetes manifests (`k8s/`) and the `Dockerfile`, checked without a
//! cluster or a Docker daemon. Every overlay is rendered with `kubectl
//! kustomize`, linted with `yamllint` and validated offline by
//! `kubernetes-validate` (strict, pinned Kubernetes versions); Strimzi's
//! `KafkaTopic`, a custom resource it has no schema for, is validated against
//! `k8s/schemas/`. The rendered objects are then held against what the code
//! says: the roles `mailflow serve` knows, the listeners and admin address of
//! the configuration the pods mount, the topics of `mailflow_events::topic`
//! and the settings the Kafka backend creates them with. The ConfigMap passes
//! `mailflow check-config` in a pod's file system, laid out from the rendered
//! volumes once the Secrets are replaced as `k8s/README.md` says.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use mailflow_actors::config::{Config, EventLogConfig, ListenerKind, MailboxStoreConfig};
use mailflow_tests::k8s::{
    OVERLAYS, args, config, container, dockerfile, flag, known_roles, kustomize, list, named, of_kind, pod_files, port,
    rendered, repo, roles, site_overlay, text, validate, volume_for,
};
use mailflow_tests::router::{binary, cli};
use serde_json::Value;

/// Roles that keep no state of their own, which a HorizontalPodAutoscaler may scale.
const STATELESS_ROLES: [&str; 3] = ["connection", "verdict", "routing"];
/// Roles that are consumer groups: a pod beyond the partition count sits idle.
const GROUP_ROLES: [&str; 4] = ["verdict", "routing", "delivery", "journal"];

#[test]
fn every_manifest_renders_lints_and_validates_against_kubernetes_and_strimzi_schemas() -> anyhow::Result<()> {
    let rendered = rendered();
    let lint = Command::new("yamllint")
        .args(["--strict", "-f", "parsable", "-c"])
        .arg(repo().join("k8s/.yamllint.yaml"))
        .arg(repo().join("k8s"))
        .output()
        .context("running yamllint (installed by scripts/install-test-deps)")?;
    ensure!(lint.status.success(), "yamllint:\n{}", String::from_utf8_lossy(&lint.stdout));
    assert_eq!(
        of_kind(&rendered.topics, "KafkaTopic").len(),
        rendered.topics.len(),
        "k8s/kafka-topics holds topics only"
    );
    for (overlay, docs) in &rendered.overlays {
        ensure!(!of_kind(docs, "Deployment").is_empty(), "{overlay}: no Deployment");
        // Every object a pod refers to is in the same rendering, under the
        // name kustomize gave it (generated names carry a hash).
        for deployment in of_kind(docs, "Deployment") {
            for volume in list(deployment, "/spec/template/spec/volumes") {
                for (kind, pointer) in [
                    ("ConfigMap", "/configMap/name"),
                    ("Secret", "/secret/secretName"),
                    ("PersistentVolumeClaim", "/persistentVolumeClaim/claimName"),
                ] {
                    if let Some(name) = volume.pointer(pointer).and_then(Value::as_str) {
                        named(docs, kind, name).with_context(|| format!("{overlay}: volume {}", volume["name"]))?;
                    }
                }
            }
        }
        // Every Service reaches pods, on ports those pods have.
        for service in of_kind(docs, "Service") {
            let selector = service["spec"]["selector"].as_object().context("a Service without selector")?;
            let pods: Vec<&Value> = of_kind(docs, "Deployment")
                .into_iter()
                .filter(|d| selector.iter().all(|(k, v)| d["spec"]["template"]["metadata"]["labels"][k] == *v))
                .collect();
            ensure!(!pods.is_empty(), "{overlay}: Service {} selects no pod", service["metadata"]["name"]);
            for (deployment, service_port) in
                pods.iter().flat_map(|d| list(service, "/spec/ports").iter().map(move |p| (d, p)))
            {
                ensure!(
                    port(container(deployment)?, &service_port["targetPort"]).is_some(),
                    "{overlay}: Service {} targets {} which {} does not have",
                    service["metadata"]["name"],
                    service_port["targetPort"],
                    deployment["metadata"]["name"]
                );
            }
        }
    }
    Ok(())
}

#[test]
fn each_role_runs_in_one_deployment_and_the_all_in_one_deployment_runs_them_all() -> anyhow::Result<()> {
    let known = known_roles()?;
    for (overlay, docs) in &rendered().overlays {
        let mut seen = Vec::new();
        for deployment in of_kind(docs, "Deployment") {
            let container = container(deployment)?;
            ensure!(
                args(container).first() == Some(&"serve"),
                "{overlay}: {} does not serve",
                deployment["metadata"]["name"]
            );
            for role in roles(container, &known) {
                ensure!(known.contains(&role), "{overlay}: `{role}` is not a role of `mailflow serve` ({known:?})");
                seen.push(role);
            }
        }
        seen.sort();
        let mut all = known.clone();
        all.sort();
        assert_eq!(seen, all, "{overlay}: every role exactly once");
    }
    let all_in_one = of_kind(&rendered().overlays["overlays/all-in-one"], "Deployment");
    assert_eq!(all_in_one.len(), 1, "one Deployment runs everything");
    Ok(())
}

#[test]
fn every_deployment_probes_healthz_and_readyz_on_the_admin_port_of_its_configuration() -> anyhow::Result<()> {
    for (overlay, docs) in &rendered().overlays {
        for deployment in of_kind(docs, "Deployment") {
            let name = text(deployment, "/metadata/name");
            let container = container(deployment)?;
            let listen = config(docs, deployment)?.admin.listen.context("no [admin] listen")?;
            ensure!(
                listen.ip().is_unspecified(),
                "{overlay}/{name}: the kubelet cannot reach the admin API on {listen}"
            );
            for (probe, path) in
                [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")]
            {
                let get = &container[probe]["httpGet"];
                if probe == "startupProbe" && container[probe].is_null() {
                    continue;
                }
                assert_eq!(get["path"], path, "{overlay}/{name}: {probe}");
                assert_eq!(
                    port(container, &get["port"]),
                    Some(u64::from(listen.port())),
                    "{overlay}/{name}: {probe} port"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn every_pod_runs_as_a_non_root_user_on_a_read_only_root_without_capabilities() -> anyhow::Result<()> {
    let known = known_roles()?;
    for (overlay, docs) in &rendered().overlays {
        for deployment in of_kind(docs, "Deployment") {
            let name = format!("{overlay}/{}", text(deployment, "/metadata/name"));
            let pod = &deployment["spec"]["template"]["spec"]["securityContext"];
            let container = container(deployment)?;
            let own = &container["securityContext"];
            let either = |field: &str| if own[field].is_null() { &pod[field] } else { &own[field] };
            assert_eq!(either("runAsNonRoot"), true, "{name}: runAsNonRoot");
            ensure!(either("runAsUser").as_u64().is_some_and(|uid| uid > 0), "{name}: a non-zero runAsUser");
            assert_eq!(either("seccompProfile")["type"], "RuntimeDefault", "{name}: seccomp");
            assert_eq!(own["readOnlyRootFilesystem"], true, "{name}: readOnlyRootFilesystem");
            assert_eq!(own["allowPrivilegeEscalation"], false, "{name}: allowPrivilegeEscalation");
            ensure!(own["privileged"] != true, "{name}: privileged");
            assert_eq!(own["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}: capabilities dropped");
            ensure!(list(own, "/capabilities/add").is_empty(), "{name}: capabilities added");
            // Without NET_BIND_SERVICE only unprivileged ports can be bound.
            for p in list(container, "/ports") {
                ensure!(p["containerPort"].as_u64().is_some_and(|n| n >= 1024), "{name}: privileged port {p}");
            }
            // What the process writes (the Maildir) is on a volume that outlives the pod.
            if let MailboxStoreConfig::Maildir { path } = config(docs, deployment)?.mailbox_store
                && roles(container, &known).iter().any(|r| r == "delivery")
            {
                let path = path.to_str().context("UTF-8 path")?;
                let (volume, _) = volume_for(deployment, container, &format!("{path}/new"))?;
                ensure!(
                    volume["persistentVolumeClaim"].is_object(),
                    "{name}: the Maildir {path} is not on a persistent volume"
                );
                let mount = list(container, "/volumeMounts").iter().find(|m| m["name"] == volume["name"]);
                ensure!(mount.is_some_and(|m| m["readOnly"] != true), "{name}: the Maildir is mounted read-only");
            }
            // The trace index's checkpoint, if configured, is on a writable volume.
            if let Some(path) = config(docs, deployment)?.trace.path {
                let path = path.to_str().context("UTF-8 path")?;
                let (volume, _) = volume_for(deployment, container, &format!("{path}/index.json"))?;
                let mount = list(container, "/volumeMounts").iter().find(|m| m["name"] == volume["name"]);
                ensure!(mount.is_some_and(|m| m["readOnly"] != true), "{name}: [trace] path {path} is read-only");
            }
        }
    }
    Ok(())
}

#[test]
fn the_smtp_service_publishes_25_and_587_on_the_listeners_of_the_configuration() -> anyhow::Result<()> {
    let known = known_roles()?;
    for (overlay, docs) in &rendered().overlays {
        let service = named(docs, "Service", "mailflow-smtp")?;
        assert_eq!(service["spec"]["externalTrafficPolicy"], "Local", "{overlay}: client addresses must be kept");
        let selector = service["spec"]["selector"].as_object().context("selector")?;
        for deployment in of_kind(docs, "Deployment") {
            let container = container(deployment)?;
            let selected = selector.iter().all(|(k, v)| deployment["spec"]["template"]["metadata"]["labels"][k] == *v);
            let connection = roles(container, &known).iter().any(|r| r == "connection");
            assert_eq!(selected, connection, "{overlay}: the SMTP Service selects exactly the connection pods");
            if !connection {
                continue;
            }
            let config = config(docs, deployment)?;
            for (published, kind) in [(25, ListenerKind::Smtp), (587, ListenerKind::Submission)] {
                let service_port = list(service, "/spec/ports")
                    .iter()
                    .find(|p| p["port"] == published)
                    .with_context(|| format!("{overlay}: no port {published}"))?;
                let listener = config
                    .server
                    .listeners
                    .iter()
                    .find(|l| l.kind == kind)
                    .with_context(|| format!("no {kind:?} listener"))?;
                ensure!(
                    listener.address.ip().is_unspecified(),
                    "{overlay}: {} listens on {}",
                    listener.name,
                    listener.address
                );
                assert_eq!(
                    port(container, &service_port["targetPort"]),
                    Some(u64::from(listener.address.port())),
                    "{overlay}: port {published} reaches the {kind:?} listener"
                );
            }
            let tls = config.server.tls.as_ref().context("587 needs [server.tls]")?;
            for file in [&tls.certificate, &tls.key] {
                let (volume, _) = volume_for(deployment, container, file.to_str().context("UTF-8")?)?;
                ensure!(volume["secret"].is_object(), "{overlay}: {} is not from a Secret", file.display());
            }
        }
    }
    Ok(())
}

#[test]
fn stateless_roles_scale_with_an_hpa_and_every_deployment_has_a_disruption_budget() -> anyhow::Result<()> {
    let known = known_roles()?;
    for (overlay, docs) in &rendered().overlays {
        let autoscalers = of_kind(docs, "HorizontalPodAutoscaler");
        for deployment in of_kind(docs, "Deployment") {
            let name = text(deployment, "/metadata/name");
            let roles = roles(container(deployment)?, &known);
            let targeting: Vec<_> = autoscalers
                .iter()
                .filter(|h| {
                    h["spec"]["scaleTargetRef"]["kind"] == "Deployment" && h["spec"]["scaleTargetRef"]["name"] == name
                })
                .collect();
            let stateless = roles.iter().all(|r| STATELESS_ROLES.contains(&r.as_str()));
            assert_eq!(
                targeting.len(),
                usize::from(stateless),
                "{overlay}/{name} ({roles:?}): an HPA exactly when stateless"
            );
            if let Some(hpa) = targeting.first() {
                // The HPA owns the replica count; one in the Deployment would reset it on every apply.
                ensure!(deployment["spec"]["replicas"].is_null(), "{overlay}/{name}: replicas set beside an HPA");
                let EventLogConfig::Kafka { partitions, .. } = config(docs, deployment)?.event_log else {
                    bail!("{overlay}/{name}: a scaled role needs the Kafka log");
                };
                let max = hpa["spec"]["maxReplicas"].as_u64().context("maxReplicas")?;
                if roles.iter().any(|r| GROUP_ROLES.contains(&r.as_str())) {
                    ensure!(max <= u64::from(partitions), "{overlay}/{name}: {max} pods for {partitions} partitions");
                }
            }
            let labels = &deployment["spec"]["template"]["metadata"]["labels"];
            let budgets: Vec<_> = of_kind(docs, "PodDisruptionBudget")
                .into_iter()
                .filter(|b| {
                    let wanted = b["spec"]["selector"]["matchLabels"].as_object();
                    wanted.is_some_and(|w| !w.is_empty() && w.iter().all(|(k, v)| labels[k] == *v))
                })
                .collect();
            assert_eq!(budgets.len(), 1, "{overlay}/{name}: one PodDisruptionBudget");
            let budget = &budgets[0]["spec"];
            ensure!(
                !budget["maxUnavailable"].is_null() || !budget["minAvailable"].is_null(),
                "{overlay}/{name}: empty budget"
            );
        }
    }
    Ok(())
}

#[test]
fn kafka_topics_are_the_topics_of_the_code_with_the_partitions_and_retention_it_creates_them_with() -> anyhow::Result<()>
{
    use mailflow_events::topic;
    let rendered = rendered();
    let docs = &rendered.overlays["overlays/roles"];
    let deployment = of_kind(docs, "Deployment").into_iter().next().context("a Deployment")?;
    let EventLogConfig::Kafka { brokers, topic_prefix, partitions, replication_factor, .. } =
        config(docs, deployment)?.event_log
    else {
        bail!("the manifests' configuration must use Kafka");
    };
    // `<cluster>-kafka-bootstrap.<namespace>.svc:<port>` is the Strimzi cluster the topics name.
    let host = brokers.split(',').next().and_then(|b| b.split(':').next()).unwrap_or_default();
    let (service, namespace) = host.split_once('.').context("brokers must name a Service with its namespace")?;
    let cluster = service.strip_suffix("-kafka-bootstrap").context("brokers must be a Strimzi bootstrap Service")?;
    let namespace = namespace.split('.').next().unwrap_or_default();

    let topics = of_kind(&rendered.topics, "KafkaTopic");
    let names: BTreeSet<&str> = topics.iter().map(|t| text(t, "/spec/topicName")).collect();
    let expected: BTreeSet<String> = topic::ALL.iter().map(|t| format!("{topic_prefix}{t}")).collect();
    assert_eq!(names, expected.iter().map(String::as_str).collect(), "one KafkaTopic per topic of the code");
    assert_eq!(topics.len(), topic::ALL.len(), "no topic twice");
    let setting = |topic: &Value, key: &str| match &topic["spec"]["config"][key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    for t in &topics {
        let name = text(t, "/spec/topicName");
        assert_eq!(text(t, "/metadata/labels/strimzi.io~1cluster"), cluster, "{name}: cluster");
        assert_eq!(text(t, "/metadata/namespace"), namespace, "{name}: namespace");
        assert_eq!(t["spec"]["partitions"], partitions, "{name}: partitions as [event_log] partitions");
        assert_eq!(t["spec"]["replicas"], replication_factor, "{name}: replicas as [event_log] replication_factor");
        // events/src/log/kafka.rs creates every topic with twice the largest record.
        let max_bytes = (2 * mailflow_events::log::MAX_RECORD_SIZE).to_string();
        assert_eq!(setting(t, "max.message.bytes"), max_bytes, "{name}: max.message.bytes");
        // acks=all then means this many copies, and one broker may be down.
        let in_sync: i64 = setting(t, "min.insync.replicas").parse().context("min.insync.replicas")?;
        ensure!(in_sync >= 2 && in_sync < i64::from(replication_factor), "{name}: min.insync.replicas {in_sync}");
        if topic::EVENT_TOPICS.iter().any(|e| format!("{topic_prefix}{e}") == name) {
            assert_eq!(setting(t, "cleanup.policy"), "delete", "{name}: an event topic is never compacted");
            assert_eq!(setting(t, "retention.ms"), "-1", "{name}: an event topic is kept forever");
            assert_eq!(setting(t, "retention.bytes"), "-1", "{name}: whatever its size");
        } else {
            assert_eq!(name, format!("{topic_prefix}{}", topic::SNAPSHOTS));
            assert_eq!(setting(t, "cleanup.policy"), "compact", "{name}: snapshots are compacted");
        }
    }
    Ok(())
}

#[test]
fn the_configuration_passes_check_config_in_every_pod_once_the_secrets_are_replaced_and_fails_on_the_placeholders()
-> anyhow::Result<()> {
    let known = known_roles()?;
    for overlay in OVERLAYS {
        let site = tempfile::tempdir()?;
        site_overlay(site.path(), overlay)?;
        let docs = validate(&kustomize(site.path())?)?;
        let claim = named(&docs, "PersistentVolumeClaim", "mailflow-mail")?;
        assert_eq!(claim["spec"]["storageClassName"], "nfs-client", "{overlay}: the site's storage class");
        for deployment in of_kind(&docs, "Deployment") {
            let name = format!("{overlay} with its Secrets/{}", text(deployment, "/metadata/name"));
            assert_eq!(container(deployment)?["image"], "registry.example.net/mailflow:0.1.0", "{name}: image");
            let root = tempfile::tempdir()?;
            let path = pod_files(&docs, deployment, root.path())?;
            let run = cli(&["check-config", path.to_str().context("UTF-8")?])?;
            assert_eq!(run.status, 0, "{name}: mailflow check-config: {run:?}");
            // What start-up reads beyond what check-config does is in the pod too.
            let config = Config::load(&path)?;
            let token = config.admin.token_file.as_ref().context("admin.token_file")?;
            ensure!(token.is_file(), "{name}: {} is not in the pod", token.display());
            if roles(container(deployment)?, &known).iter().any(|r| r == "connection") {
                let tls = config.server.tls.as_ref().context("[server.tls]")?;
                ensure!(
                    tls.certificate.is_file() && tls.key.is_file(),
                    "{name}: the TLS certificate is not in the pod"
                );
            }
        }
        // As shipped, the placeholder DKIM key stops every pod at start-up.
        let docs = &rendered().overlays[overlay];
        for deployment in of_kind(docs, "Deployment") {
            let name = format!("{overlay}/{}", text(deployment, "/metadata/name"));
            let root = tempfile::tempdir()?;
            let path = pod_files(docs, deployment, root.path())?;
            let run = cli(&["check-config", path.to_str().context("UTF-8")?])?;
            assert_eq!(run.status, 1, "{name}: the placeholder DKIM key is refused: {run:?}");
            ensure!(run.stderr.contains("/etc/mailflow/dkim/example.com.pem"), "{name}: {}", run.stderr);
        }
    }
    Ok(())
}

#[test]
fn the_dockerfile_builds_the_workspace_binary_and_runs_it_with_the_configuration_the_manifests_mount()
-> anyhow::Result<()> {
    let instructions = dockerfile()?;
    let all = |word: &str| instructions.iter().filter(|(w, _)| w == word).map(|(_, r)| r.as_str()).collect::<Vec<_>>();
    let metadata = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
        .args(["metadata", "--no-deps", "--offline", "--format-version", "1"])
        .current_dir(repo())
        .output()?;
    ensure!(metadata.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&metadata.stderr));
    let metadata: Value = serde_json::from_slice(&metadata.stdout)?;

    // Two stages on one Debian release, the builder on the workspace's Rust.
    let stages = all("FROM");
    let actors =
        list(&metadata, "/packages").iter().find(|p| p["name"] == "mailflow-actors").context("mailflow-actors")?;
    let rust = text(actors, "/rust_version");
    assert_eq!(stages, [format!("rust:{rust}-bookworm AS build").as_str(), "debian:bookworm-slim"], "stages");

    // The build names a package of the workspace and a binary it has.
    let build = all("RUN").into_iter().find(|r| r.contains("cargo build")).context("no cargo build")?;
    let words: Vec<&str> = build.split_whitespace().collect();
    let after = |flag: &str| words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1)).copied();
    let (package, bin) = (after("-p").context("-p")?, after("--bin").context("--bin")?);
    ensure!(words.contains(&"--release") && words.contains(&"--locked"), "a locked release build: {build}");
    let targets = list(&metadata, "/packages")
        .iter()
        .find(|p| p["name"] == package)
        .with_context(|| format!("no package {package} in the workspace"))?;
    ensure!(
        list(targets, "/targets").iter().any(|t| t["name"] == bin && list(t, "/kind").contains(&Value::from("bin"))),
        "{package} has no binary {bin}"
    );
    assert_eq!(bin, "mailflow", "the binary is mailflow");
    ensure!(build.contains(&format!("target/release/{bin} /usr/local/bin/{bin}")), "{build}");
    ensure!(all("COPY").contains(&format!("--from=build /usr/local/bin/{bin} /usr/local/bin/{bin}").as_str()), "COPY");
    assert_eq!(all("ENTRYPOINT"), [format!("[\"{bin}\"]").as_str()], "ENTRYPOINT");

    // CMD serves the configuration every Deployment mounts, as the same user.
    let cmd: Vec<String> = serde_json::from_str(all("CMD").first().context("CMD")?)?;
    assert_eq!(cmd[..2], ["serve", "--config"], "CMD");
    let user = all("USER");
    for (overlay, docs) in &rendered().overlays {
        for deployment in of_kind(docs, "Deployment") {
            let container = container(deployment)?;
            let name = text(deployment, "/metadata/name");
            assert_eq!(flag(container, "--config"), Some(cmd[2].as_str()), "{overlay}/{name}: the config path");
            let (volume, key) = volume_for(deployment, container, &cmd[2])?;
            let map = named(docs, "ConfigMap", text(volume, "/configMap/name"))?;
            ensure!(map["data"][&key].is_string(), "{overlay}/{name}: {} is not mounted", cmd[2]);
            let pod = &deployment["spec"]["template"]["spec"]["securityContext"];
            assert_eq!(
                user,
                [format!("{}:{}", pod["runAsUser"], pod["runAsGroup"]).as_str()],
                "{overlay}/{name}: USER"
            );
        }
    }
    let all_in_one = of_kind(&rendered().overlays["overlays/all-in-one"], "Deployment");
    let ports: BTreeSet<String> =
        list(container(all_in_one[0])?, "/ports").iter().map(|p| p["containerPort"].to_string()).collect();
    let exposed: BTreeSet<String> = all("EXPOSE").iter().flat_map(|e| e.split(' ')).map(str::to_string).collect();
    assert_eq!(exposed, ports, "EXPOSE lists the container ports");

    // The runtime stage adds only ca-certificates to bookworm-slim, whose
    // required packages libc6, libgcc-s1 and zlib1g ship these libraries.
    const SLIM: [&str; 8] = [
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "libz.so.1",
        "ld-linux-x86-64.so.2",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
    ];
    let readelf = Command::new("readelf").arg("-d").arg(binary()?).output().context("running readelf")?;
    let needed: Vec<String> = String::from_utf8_lossy(&readelf.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1).map(|n| n.trim_end_matches(']').to_string()))
        .collect();
    ensure!(!needed.is_empty(), "readelf found no NEEDED entry");
    for library in &needed {
        ensure!(
            SLIM.contains(&library.as_str()),
            "the binary needs {library}, which the runtime stage does not install"
        );
    }

    // The build context keeps every workspace member and leaves target/ out.
    let ignored = std::fs::read_to_string(repo().join(".dockerignore"))?;
    let patterns: Vec<&str> = ignored.lines().filter(|l| !l.starts_with('#')).map(|l| l.trim_matches('/')).collect();
    ensure!(patterns.contains(&"target"), ".dockerignore must leave out target/");
    for member in list(&metadata, "/workspace_members") {
        let member = list(&metadata, "/packages").iter().find(|p| p["id"] == *member).context("member")?;
        let dir = Path::new(text(member, "/manifest_path")).parent().context("member dir")?;
        let dir = dir.strip_prefix(repo().canonicalize()?)?.to_str().context("UTF-8")?;
        ensure!(!patterns.contains(&dir), ".dockerignore leaves out the workspace member {dir}");
    }
    Ok(())
}
