//! Real SMTP clients for the tests: Python's smtplib and swaks.

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{Context as _, bail};

/// Runs a Python 3 script with `ADDR` (host) and `PORT` bound, and parses the
/// JSON it prints on its last line.
pub fn python(address: SocketAddr, script: &str) -> anyhow::Result<serde_json::Value> {
    let prelude = format!(
        "import json, smtplib, ssl, socket, sys\nADDR = {:?}\nPORT = {}\n",
        address.ip().to_string(),
        address.port()
    );
    let output =
        Command::new("python3").arg("-c").arg(format!("{prelude}{script}")).output().context("running python3")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("python failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    }
    let last = stdout.lines().last().context("python printed nothing")?;
    Ok(serde_json::from_str(last)?)
}

/// Runs swaks against `address`; returns (exit code, transcript).
pub fn swaks(address: SocketAddr, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let output = Command::new("swaks")
        .arg("--server")
        .arg(address.ip().to_string())
        .arg("--port")
        .arg(address.port().to_string())
        .args(args)
        .output()
        .context("running swaks (installed by scripts/install-test-deps)")?;
    let transcript = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((output.status.code().unwrap_or(-1), transcript))
}

/// Sends `count` messages from `sender` to `recipient` in one session from
/// the on-premises server's address, subjects `message 000`, `message 001`, …
pub fn send_numbered(address: SocketAddr, sender: &str, recipient: &str, count: usize) -> anyhow::Result<()> {
    let script = format!(
        r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("onprem.contoso.com")
for n in range({count}):
    s.sendmail({sender:?}, [{recipient:?}], ("From: {sender}\r\nSubject: message %03d\r\n\r\nbody %d\r\n" % (n, n)).encode())
s.quit()
print(json.dumps("sent"))
"#
    );
    python(address, &script)?;
    Ok(())
}

/// Over one session from the on-premises connector's address, sends each of
/// `messages` (recipient, content) from alice@contoso.com in a transaction of
/// its own, then one transaction whose only recipient, `refused`, must be
/// refused. Returns recipient → message id (from each 250), and `"refused"` →
/// the refusal as `"CODE TEXT"`.
pub fn send_each_and_refuse(
    address: SocketAddr,
    messages: &[(String, String)],
    refused: &str,
) -> anyhow::Result<serde_json::Value> {
    let script = format!(
        r#"
ids = {{}}
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("onprem.contoso.com")
for to, body in {messages:?}:
    assert s.mail("alice@contoso.com")[0] == 250
    assert s.rcpt(to)[0] == 250
    code, reply = s.data(body.encode())
    assert code == 250, reply
    ids[to] = reply.decode().split("<")[1].split(">")[0]
assert s.mail("alice@contoso.com")[0] == 250
code, reply = s.rcpt({refused:?})
ids["refused"] = "%d %s" % (code, reply.decode())
s.rset()
s.quit()
print(json.dumps(ids))
"#
    );
    python(address, &script)
}
