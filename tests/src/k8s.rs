//! The Kubernetes manifests in `k8s/` as the tests see them: rendered with
//! `kubectl kustomize`, validated offline with `kubernetes-validate` (and
//! Strimzi's `KafkaTopic` against `k8s/schemas/`), and read back as JSON;
//! accessors for Deployments, their container, arguments, ports and volumes;
//! the configuration a pod mounts; a pod's file system laid out from the
//! rendered volumes; the operator's site overlay of `k8s/README.md`; and the
//! instructions of the `Dockerfile`. Needs `kubectl`, `python3` with
//! `kubernetes-validate` and `openssl` (scripts/install-test-deps).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use mailflow_actors::config::Config;
use serde_json::Value;

use crate::router::cli;

/// Kubernetes versions the rendered objects must be valid for: the `kubectl`
/// the tests run, and the newest `kubernetes-validate==1.37.0` knows.
pub const KUBERNETES_VERSIONS: &str = "1.32.0,1.37.0";
/// The overlays a cluster can be given, as directories under `k8s/`.
pub const OVERLAYS: [&str; 2] = ["overlays/roles", "overlays/all-in-one"];

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl kustomize DIR`.
pub fn kustomize(dir: &Path) -> anyhow::Result<String> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("running kubectl (installed by scripts/install-test-deps)")?;
    ensure!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Validates every document of `yaml` (Kubernetes kinds with
/// `kubernetes-validate --strict` at each of [`KUBERNETES_VERSIONS`], Strimzi
/// kinds against the committed schema; a kind with no schema is an error, not
/// a warning) and returns them as JSON.
pub fn validate(yaml: &str) -> anyhow::Result<Vec<Value>> {
    const SCRIPT: &str = r#"
import json, sys
try:
    import yaml, jsonschema
    import kubernetes_validate.utils as kv
except ImportError as e:
    sys.exit("%s: run scripts/install-test-deps (pip kubernetes-validate, PyYAML, jsonschema)" % e)
path, schema_path, versions = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
schema = json.load(open(schema_path))
jsonschema.Draft202012Validator.check_schema(schema)
strimzi = jsonschema.Draft202012Validator(schema)
errors = []
for d in docs:
    name = "%s/%s" % (d.get("kind"), d.get("metadata", {}).get("name"))
    if d.get("apiVersion", "").startswith("kafka.strimzi.io/"):
        errors += ["%s: %s at /%s" % (name, e.message, "/".join(map(str, e.path))) for e in strimzi.iter_errors(d)]
        continue
    for version in versions:
        try:
            kv.validate(d, version, strict=True)
        except kv.ValidationError as e:
            errors.append("%s (Kubernetes %s): %s at /%s" % (name, version, e.message, "/".join(map(str, e.path))))
        except (kv.SchemaNotFoundError, kv.VersionNotSupportedError) as e:
            errors.append("%s: %s" % (name, e.message))
if errors:
    sys.exit("\n".join(errors))
json.dump(docs, sys.stdout)
"#;
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), yaml)?;
    let schema = repo().join("k8s/schemas/kafkatopic-kafka.strimzi.io-v1.json");
    let output = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(file.path())
        .arg(&schema)
        .arg(KUBERNETES_VERSIONS)
        .output()
        .context("running python3")?;
    ensure!(output.status.success(), "validation failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let docs: Vec<Value> = serde_json::from_slice(&output.stdout)?;
    ensure!(!docs.is_empty(), "nothing rendered");
    Ok(docs)
}

/// The shipped kustomizations, rendered and validated once for all tests.
#[derive(Debug)]
pub struct Rendered {
    /// Overlay directory → its objects.
    pub overlays: BTreeMap<&'static str, Vec<Value>>,
    /// `k8s/kafka-topics`.
    pub topics: Vec<Value>,
}

/// [`Rendered`], made by the first caller of the process; panics with the
/// reason when rendering or validation failed.
pub fn rendered() -> &'static Rendered {
    static RENDERED: OnceLock<Result<Rendered, String>> = OnceLock::new();
    let result = RENDERED.get_or_init(|| {
        let render = |dir: &str| validate(&kustomize(&repo().join("k8s").join(dir))?);
        let overlays = OVERLAYS.iter().map(|dir| Ok((*dir, render(dir)?))).collect::<anyhow::Result<_>>();
        let topics = render("kafka-topics");
        match (overlays, topics) {
            (Ok(overlays), Ok(topics)) => Ok(Rendered { overlays, topics }),
            (Err(err), _) | (_, Err(err)) => Err(format!("{err:#}")),
        }
    });
    match result {
        Ok(rendered) => rendered,
        Err(err) => panic!("rendering k8s/: {err}"),
    }
}

/// The string at a JSON pointer, or "" when there is none.
pub fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// The array at a JSON pointer, or none.
pub fn list<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value.pointer(pointer).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// The objects of one kind.
pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The object of `kind` called `name`.
pub fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name}"))
}

/// The one container of a Deployment, which must be `mailflow`.
pub fn container(deployment: &Value) -> anyhow::Result<&Value> {
    let name = text(deployment, "/metadata/name");
    match list(deployment, "/spec/template/spec/containers") {
        [only] if only["name"] == "mailflow" => Ok(only),
        other => bail!("{name}: expected one container named mailflow, found {}", other.len()),
    }
}

/// A container's arguments.
pub fn args(container: &Value) -> Vec<&str> {
    list(container, "/args").iter().filter_map(Value::as_str).collect()
}

/// The value after `name` among a container's arguments.
pub fn flag<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    let args = args(container);
    args.iter().position(|a| *a == name).and_then(|i| args.get(i + 1).copied())
}

/// The roles `mailflow serve` accepts, from its own help.
pub fn known_roles() -> anyhow::Result<Vec<String>> {
    let help = cli(&["serve", "-h"])?.stdout;
    // The possible values of the `--roles` option (other options list theirs too).
    let roles_option = help.split("--roles").nth(1).unwrap_or_default();
    let values = roles_option.split("[possible values: ").nth(1).and_then(|rest| rest.split(']').next());
    let roles: Vec<String> =
        values.context("no possible values in `serve -h`")?.split(", ").map(str::to_string).collect();
    ensure!(roles.len() >= 4, "too few roles in {help}");
    Ok(roles)
}

/// The roles a Deployment's pod runs (all of them without `--roles`).
pub fn roles(container: &Value, known: &[String]) -> Vec<String> {
    match flag(container, "--roles") {
        Some(list) => list.split(',').map(str::to_string).collect(),
        None => known.to_vec(),
    }
}

/// A container port: a number, or the name of one of `container`'s ports.
pub fn port(container: &Value, port: &Value) -> Option<u64> {
    port.as_u64().or_else(|| {
        list(container, "/ports").iter().find(|p| p["name"] == *port).and_then(|p| p["containerPort"].as_u64())
    })
}

/// The pod volume a container's `mount` refers to.
pub fn volume<'a>(deployment: &'a Value, mount: &Value) -> anyhow::Result<&'a Value> {
    list(deployment, "/spec/template/spec/volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .with_context(|| format!("no volume {}", mount["name"]))
}

/// The volume of `deployment` that `container` mounts at the directory
/// holding `path`, with the file's path inside it.
pub fn volume_for<'a>(deployment: &'a Value, container: &Value, path: &str) -> anyhow::Result<(&'a Value, String)> {
    let mount = list(container, "/volumeMounts")
        .iter()
        .find(|m| path.strip_prefix(text(m, "/mountPath")).is_some_and(|rest| rest.starts_with('/')))
        .with_context(|| format!("{path} is on no mounted volume"))?;
    Ok((volume(deployment, mount)?, path[text(mount, "/mountPath").len() + 1..].to_string()))
}

/// The configuration a Deployment's pod loads: the ConfigMap entry at its `--config` path.
pub fn config(docs: &[Value], deployment: &Value) -> anyhow::Result<Config> {
    let container = container(deployment)?;
    let path = flag(container, "--config").context("no --config")?;
    let (volume, key) = volume_for(deployment, container, path)?;
    let map = named(docs, "ConfigMap", text(volume, "/configMap/name"))?;
    let toml = text(map, &format!("/data/{key}"));
    ensure!(!toml.is_empty(), "the ConfigMap has no {key}");
    Ok(toml::from_str(toml)?)
}

/// Lays out under `root` what `deployment`'s container sees: each ConfigMap
/// and Secret volume's entries as files at its mount path, a directory for
/// any other volume. The configuration file's absolute paths are moved under
/// `root` with the mounts. Returns the configuration's path under `root`.
pub fn pod_files(docs: &[Value], deployment: &Value, root: &Path) -> anyhow::Result<PathBuf> {
    let container = container(deployment)?;
    let mounts: Vec<&str> = list(container, "/volumeMounts").iter().map(|m| text(m, "/mountPath")).collect();
    for mount in list(container, "/volumeMounts") {
        let dir = root.join(text(mount, "/mountPath").trim_start_matches('/'));
        std::fs::create_dir_all(&dir)?;
        let volume = volume(deployment, mount)?;
        ensure!(
            volume["secret"]["items"].is_null() && volume["configMap"]["items"].is_null(),
            "items are not laid out"
        );
        if let Some(name) = volume.pointer("/configMap/name").and_then(Value::as_str) {
            for (key, value) in named(docs, "ConfigMap", name)?["data"].as_object().into_iter().flatten() {
                std::fs::write(dir.join(key), value.as_str().unwrap_or_default())?;
            }
        }
        if let Some(name) = volume.pointer("/secret/secretName").and_then(Value::as_str) {
            for (key, value) in named(docs, "Secret", name)?["data"].as_object().into_iter().flatten() {
                // kustomize wraps long values over lines.
                let encoded: String = value.as_str().unwrap_or_default().split_whitespace().collect();
                let bytes = base64::engine::general_purpose::STANDARD.decode(encoded)?;
                std::fs::write(dir.join(key), bytes)?;
            }
        }
    }
    let path = root.join(flag(container, "--config").context("--config")?.trim_start_matches('/'));
    let mut toml = std::fs::read_to_string(&path).context("the configuration is not where --config says")?;
    for mount in mounts {
        toml = toml.replace(&format!("\"{mount}"), &format!("\"{}{mount}", root.display()));
    }
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// The operator's own overlay of k8s/README.md ("Your site's overlay"), with
/// `BASE` standing for the overlay it builds on.
pub const SITE_KUSTOMIZATION: &str = r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: mailflow
resources:
  - BASE
images:
  - name: mailflow
    newName: registry.example.net/mailflow
    newTag: 0.1.0
configMapGenerator:
  - name: mailflow-config
    behavior: replace
    files:
      - mailflow.toml
secretGenerator:
  - name: mailflow-tls
    behavior: replace
    type: kubernetes.io/tls
    files:
      - tls.crt
      - tls.key
  - name: mailflow-dkim
    behavior: replace
    files:
      - example.com.pem
  - name: mailflow-admin-token
    behavior: replace
    files:
      - token
patches:
  - target:
      kind: PersistentVolumeClaim
      name: mailflow-mail
    patch: |-
      - op: add
        path: /spec/storageClassName
        value: nfs-client
"#;

/// Writes the site overlay of k8s/README.md on `base` (a directory under
/// k8s/) into `dir`, with the shipped configuration and freshly made keys.
pub fn site_overlay(dir: &Path, base: &str) -> anyhow::Result<()> {
    std::fs::copy(repo().join("k8s/base/mailflow.toml"), dir.join("mailflow.toml"))?;
    let certified = rcgen::generate_simple_self_signed(vec!["mx.example.com".to_string()])?;
    std::fs::write(dir.join("tls.crt"), certified.cert.pem())?;
    std::fs::write(dir.join("tls.key"), certified.signing_key.serialize_pem())?;
    let openssl = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(dir.join("example.com.pem"))
        .output()
        .context("running openssl")?;
    ensure!(openssl.status.success(), "openssl: {}", String::from_utf8_lossy(&openssl.stderr));
    std::fs::write(dir.join("token"), format!("{}\n", uuid::Uuid::new_v4().simple()))?;
    // kustomize takes only relative paths to other kustomizations.
    let up = dir.canonicalize()?.components().count() - 1;
    let target = repo().join("k8s").join(base).canonicalize()?;
    let relative = format!("{}{}", "../".repeat(up), target.to_str().context("UTF-8")?.trim_start_matches('/'));
    std::fs::write(dir.join("kustomization.yaml"), SITE_KUSTOMIZATION.replace("BASE", &relative))?;
    Ok(())
}

/// The instructions of a Dockerfile, continuation lines joined, comments dropped.
pub fn dockerfile() -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(repo().join("Dockerfile"))?;
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()) {
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((word.to_ascii_uppercase(), rest.split_whitespace().collect::<Vec<_>>().join(" ")));
                current.clear();
            }
        }
    }
    Ok(instructions)
}
