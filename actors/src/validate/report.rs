//! The report of a validation: its tasks, their results, and the two ways
//! it is printed (a table, or one JSON document). Pure data and rendering.

use std::net::SocketAddr;

/// One task of a validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// DNS: the smart host's addresses, or the recipient domain's MX.
    Resolve,
    /// TCP to one address.
    Connect,
    /// The greeting and EHLO.
    Ehlo,
    /// STARTTLS and the handshake.
    StartTls,
    /// The certificate chain and name.
    Certificate,
    /// The test message.
    Send,
}

impl Task {
    /// The name in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Task::Resolve => "resolve",
            Task::Connect => "connect",
            Task::Ehlo => "ehlo",
            Task::StartTls => "starttls",
            Task::Certificate => "certificate",
            Task::Send => "send",
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It ran and succeeded.
    Passed,
    /// It ran and failed.
    Failed,
    /// It did not run: a task it needs failed.
    Skipped,
}

impl Status {
    /// The name in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResult {
    /// Which task.
    pub task: Task,
    /// The host it concerns (smart host, MX host, recipient domain); none for
    /// a `send` that found no host.
    pub host: Option<String>,
    /// The address it concerns (not for `resolve`).
    pub addr: Option<SocketAddr>,
    /// Passed, failed or skipped.
    pub status: Status,
    /// What was found, or why it failed: replies and EOP-style texts as delivery records them.
    pub detail: String,
}

impl TaskResult {
    pub(super) fn new(
        task: Task,
        host: Option<&str>,
        addr: Option<SocketAddr>,
        status: Status,
        detail: String,
    ) -> Self {
        Self { task, host: host.map(str::to_string), addr, status, detail }
    }
}

/// The result of validating one connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The connector's name as configured.
    pub connector: String,
    /// Recipient of the test message.
    pub recipient: String,
    /// Every task in the order run.
    pub tasks: Vec<TaskResult>,
}

impl Report {
    /// Whether every task passed.
    pub fn ok(&self) -> bool {
        !self.tasks.is_empty() && self.tasks.iter().all(|t| t.status == Status::Passed)
    }

    /// The report as one JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        let tasks: Vec<serde_json::Value> = self
            .tasks
            .iter()
            .map(|t| {
                serde_json::json!({
                    "task": t.task.name(),
                    "host": t.host,
                    "ip": t.addr.map(|a| a.ip().to_string()),
                    "port": t.addr.map(|a| a.port()),
                    "status": t.status.name(),
                    "ok": t.status == Status::Passed,
                    "detail": t.detail,
                })
            })
            .collect();
        serde_json::json!({"connector": self.connector, "recipient": self.recipient, "ok": self.ok(), "tasks": tasks})
    }

    /// The report as a table with a closing verdict line.
    pub fn to_table(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .tasks
            .iter()
            .map(|t| {
                [
                    t.task.name().to_string(),
                    t.host.clone().unwrap_or_else(|| "-".to_string()),
                    t.addr.map_or_else(|| "-".to_string(), |a| a.to_string()),
                    t.status.name().to_string(),
                    // A multi-line reply stays on its row.
                    t.detail.replace('\n', " / "),
                ]
            })
            .collect();
        let header = ["TASK", "HOST", "ADDRESS", "RESULT", "DETAIL"].map(String::from);
        let mut widths = [0usize; 4];
        for row in std::iter::once(&header).chain(&rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = format!("Outbound connector {}, test message to {}\n\n", self.connector, self.recipient);
        for row in std::iter::once(&header).chain(&rows) {
            for (width, cell) in widths.iter().zip(row) {
                out.push_str(&format!("{cell:<width$}  "));
            }
            out.push_str(&row[4]);
            out.push('\n');
        }
        let count = |status| self.tasks.iter().filter(|t| t.status == status).count();
        out.push('\n');
        if self.ok() {
            out.push_str(&format!("Validation passed: {} tasks passed.\n", self.tasks.len()));
        } else {
            out.push_str(&format!(
                "Validation failed: {} failed, {} skipped, {} passed.\n",
                count(Status::Failed),
                count(Status::Skipped),
                count(Status::Passed)
            ));
        }
        out
    }
}
