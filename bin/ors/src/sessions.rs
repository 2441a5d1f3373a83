//! `ors sessions`: look at and drive the sessions of a running server from the command
//! line (`list`, `show`, `send`, `terminate`, `drain`, `rebalance`), as tables for people or `--json` for
//! scripts. Talks to the REST API; follows the `307`s of a cluster itself, so the bearer
//! token goes along to whichever node owns a session.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Args)]
pub struct SessionsArgs {
    /// The server (any node of a cluster, or its load balancer).
    #[arg(
        long,
        global = true,
        env = "ORS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// A bearer token, when the server requires one.
    #[arg(long, global = true, env = "ORS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: SessionsCommand,
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List sessions (every node's), in id order, a page at a time.
    List {
        /// Only this node's sessions.
        #[arg(long)]
        node: Option<String>,
        /// Start after this id (the `next` a previous page printed).
        #[arg(long)]
        after: Option<String>,
        /// Sessions per page (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Follow the pages to the end.
        #[arg(long)]
        all: bool,
    },
    /// A session's states, datamodel and whether it has ended.
    Show { id: String },
    /// Send an event to a session.
    Send {
        id: String,
        event: String,
        /// The event's data: a JSON object (its fields become `_event.data`).
        #[arg(long)]
        data: Option<String>,
    },
    /// End a session.
    Terminate { id: String },
    /// Even out the sessions over the cluster's nodes (after a node joined): nodes with
    /// more than their share move the surplus to nodes with less.
    Rebalance,
    /// Move the sessions of the node at --url to other nodes of the cluster (all of
    /// them, or --limit), and print where they went. They keep their ids; requests for
    /// them are redirected to their new nodes.
    Drain {
        /// The nodes to move them to (repeat or comma-separate); default: every other
        /// node with a primary, in equal shares.
        #[arg(long, value_delimiter = ',')]
        to: Vec<String>,
        /// Move at most this many (to rebalance rather than empty the node).
        #[arg(long)]
        limit: Option<usize>,
    },
}

pub fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(args))
}

async fn run(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args)?;
    let base = args.url.as_str();
    match args.command {
        SessionsCommand::List {
            node,
            after,
            limit,
            all,
        } => {
            let mut after = after;
            let mut rows: Vec<[String; 2]> = Vec::new();
            loop {
                let mut url = endpoint(base, &["scxml", "sessions"])?;
                url.query_pairs_mut()
                    .append_pair("limit", &limit.to_string());
                if let Some(n) = &node {
                    url.query_pairs_mut().append_pair("node", n);
                }
                if let Some(a) = &after {
                    url.query_pairs_mut().append_pair("after", a);
                }
                let page = api.call(Method::GET, url.as_str(), None).await?;
                if args.json && !all {
                    println!("{page}");
                    return Ok(ExitCode::SUCCESS);
                }
                for s in page["sessions"].as_array().into_iter().flatten() {
                    rows.push([text(&s["sessionid"]), text(&s["node"])]);
                }
                after = page["next"].as_str().map(String::from);
                if !all || after.is_none() {
                    break;
                }
            }
            if args.json {
                let sessions: Vec<Value> = rows
                    .iter()
                    .map(|[id, node]| serde_json::json!({ "sessionid": id, "node": node }))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "sessions": sessions, "next": null })
                );
            } else {
                print_table(&["SESSION", "NODE"], &rows);
                if let Some(next) = after {
                    println!("(more: --after {next}, or --all)");
                }
            }
        }
        SessionsCommand::Show { id } => {
            let url = endpoint(base, &["scxml", "session", &id, "query"])?;
            let q = api.call(Method::GET, url.as_str(), None).await?;
            if args.json {
                println!("{q}");
            } else {
                let list = |v: &Value| {
                    v.as_array()
                        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(" "))
                        .unwrap_or_default()
                };
                let mut rows = vec![
                    ["session".to_string(), text(&q["sessionid"])],
                    ["done".to_string(), q["done"].to_string()],
                    ["configuration".to_string(), list(&q["configuration"])],
                    ["active states".to_string(), list(&q["active_states"])],
                ];
                if let Some(reason) = q["quarantined"].as_str() {
                    rows.push(["quarantined".to_string(), reason.to_string()]);
                }
                print_table(&["FIELD", "VALUE"], &rows);
                println!("datamodel:");
                println!("{}", serde_json::to_string_pretty(&q["datamodel"])?);
            }
        }
        SessionsCommand::Send { id, event, data } => {
            let body = match data {
                Some(d) => {
                    let v: Value = serde_json::from_str(&d).context("--data must be JSON")?;
                    if !v.is_object() {
                        bail!("--data must be a JSON object (its fields become _event.data)");
                    }
                    Some(v)
                }
                None => None,
            };
            let url = endpoint(base, &["scxml", "session", &id, "event", &event])?;
            let r = api.call(Method::POST, url.as_str(), body).await?;
            if args.json {
                println!("{r}");
            } else {
                println!(
                    "{} {}: {}",
                    text(&r["sessionid"]),
                    event,
                    text(&r["status"])
                );
            }
        }
        SessionsCommand::Drain { to, limit } => {
            let url = endpoint(base, &["cluster", "drain"])?;
            let body = serde_json::json!({ "to": to, "limit": limit });
            let r = api.call(Method::POST, url.as_str(), Some(body)).await?;
            if args.json {
                println!("{r}");
            } else {
                let mut rows: Vec<[String; 2]> = r["moved"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(node, n)| [node.clone(), n.to_string()])
                    .collect();
                rows.push(["(stayed)".into(), r["kept_count"].to_string()]);
                print_table(&["NODE", "SESSIONS MOVED"], &rows);
                for k in r["kept"].as_array().into_iter().flatten() {
                    println!("stayed: {} ({})", text(&k[0]), text(&k[1]));
                }
                println!("in {} ms", r["elapsed_ms"]);
            }
        }
        SessionsCommand::Rebalance => {
            let url = endpoint(base, &["cluster", "rebalance"])?;
            let r = api.call(Method::POST, url.as_str(), None).await?;
            if args.json {
                println!("{r}");
            } else {
                let rows: Vec<[String; 3]> = r["before"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(node, n)| {
                        let moved: u64 = r["drains"][node]["moved"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .filter_map(|(_, n)| n.as_u64())
                            .sum();
                        [node.clone(), n.to_string(), moved.to_string()]
                    })
                    .collect();
                print_table(&["NODE", "SESSIONS BEFORE", "MOVED AWAY"], &rows);
            }
        }
        SessionsCommand::Terminate { id } => {
            let url = endpoint(base, &["scxml", "session", &id, "terminate"])?;
            let r = api.call(Method::POST, url.as_str(), None).await?;
            if args.json {
                println!("{r}");
            } else {
                println!("{id} terminated");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON string's text, or the JSON itself for anything else.
fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), String::from)
}

/// `base` with `segments` appended to its path, each percent-encoded as a path segment.
fn endpoint(base: &str, segments: &[&str]) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(base).with_context(|| format!("bad --url {base}"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("bad --url {base}: not a base URL"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    anstream::println!(
        "{}{}{}",
        anstyle::Style::new().bold(),
        line(header.to_vec()),
        anstyle::Style::new().bold().render_reset()
    );
    for r in rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
}

struct Api {
    client: reqwest::Client,
    token: Option<String>,
}

/// Most `307`s followed for one call (a backup to its primary, then to the owning node).
const MAX_REDIRECTS: usize = 5;

impl Api {
    fn new(args: &SessionsArgs) -> anyhow::Result<Api> {
        let client = reqwest::Client::builder()
            // Followed here, so that the token goes along to another node.
            .redirect(reqwest::redirect::Policy::none())
            // A drain of many sessions answers when it is done.
            .timeout(std::time::Duration::from_secs(600))
            .build()
            .context("making the HTTP client")?;
        Ok(Api {
            client,
            token: args.token.clone(),
        })
    }

    /// One API call: its JSON answer, or an error with the server's message.
    async fn call(&self, method: Method, url: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.client.request(method.clone(), &url);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            let status = resp.status();
            if status == StatusCode::TEMPORARY_REDIRECT || status == StatusCode::PERMANENT_REDIRECT
            {
                let Some(next) = resp.headers().get(reqwest::header::LOCATION) else {
                    bail!("{url}: {status} without a Location");
                };
                let next = next.to_str().context("a Location that is not text")?;
                url = resp.url().join(next)?.to_string();
                continue;
            }
            let text = resp.text().await.unwrap_or_default();
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            if !status.is_success() {
                let msg = value["error"]
                    .as_str()
                    .map_or_else(|| value.to_string(), String::from);
                bail!("{url}: {status}: {msg}");
            }
            return Ok(value);
        }
        bail!("{url}: more than {MAX_REDIRECTS} redirects")
    }
}
