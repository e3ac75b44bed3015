//! `medrelay inbox list|show|reply|close` (the staff inbox for scripts and terminals) and
//! `medrelay users add|passwd|disable|list` (console accounts).
//!
//! `inbox show` prints patient data: it is recorded in the audit chain with who ran it, as the
//! console records who opened a conversation. Passwords are read from standard input or from a
//! named environment variable, never from the command line (where `ps` and shell history see it).

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use clap::{Args, Subcommand};
use medrelay_pipeline::accounts::hash_password;
use medrelay_pipeline::clock::Clock;
use medrelay_pipeline::http::console::answer;
use medrelay_pipeline::inbox::{ReengageTemplate, SERVICE_WINDOW, window_open};
use medrelay_pipeline::store::inbox::{ConversationState, InboxFilter, StaffAction};
use medrelay_pipeline::store::users::Role;

use super::{actor, load_config};
use crate::wiring::open_store;
use crate::{Failure, Output, exit};

/// `medrelay inbox ...`
#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// Conversations waiting for staff, most urgent first (no patient data).
    List(InboxListArgs),
    /// One conversation with the patient's number and messages (audited: patient data).
    Show(InboxActArgs),
    /// Answer the patient: a text inside WhatsApp's 24 h window, else the re-engagement template.
    Reply(InboxReplyArgs),
    /// Take a conversation (assign it to yourself).
    Take(InboxActArgs),
    /// Record what you learnt from the patient: confirm, cancel or reschedule (written back to
    /// the EHR like a tap), or called (a note).
    Act(InboxRecordArgs),
    /// Close a conversation.
    Close(InboxActArgs),
}

/// Arguments of `inbox list`.
#[derive(Debug, Args)]
pub struct InboxListArgs {
    /// Also closed conversations.
    #[arg(long)]
    pub all: bool,
}

/// A conversation and who acts.
#[derive(Debug, Args)]
pub struct InboxActArgs {
    pub id: i64,
    /// Who acts (recorded in the audit trail; defaults to $USER).
    #[arg(long = "as")]
    pub actor: Option<String>,
}

/// Arguments of `inbox act`.
#[derive(Debug, Args)]
pub struct InboxRecordArgs {
    pub id: i64,
    #[arg(long = "as")]
    pub actor: Option<String>,
    /// confirm, cancel, reschedule or called.
    #[arg(long)]
    pub action: String,
}

/// Arguments of `inbox reply`.
#[derive(Debug, Args)]
pub struct InboxReplyArgs {
    pub id: i64,
    #[arg(long = "as")]
    pub actor: Option<String>,
    /// The answer (inside the 24 h window).
    #[arg(long, conflicts_with = "template")]
    pub text: Option<String>,
    /// Send the configured re-engagement template instead (outside the window).
    #[arg(long)]
    pub template: bool,
    /// Send the prepared answer of this name (`[[console.canned]]`).
    #[arg(long, conflicts_with_all = ["text", "template"])]
    pub canned: Option<String>,
}

/// `medrelay users ...`
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a console account; the password is read from stdin (or `--password-env`).
    Add(UserAddArgs),
    /// Set a new password (every session of the user ends).
    Passwd(UserPasswordArgs),
    /// Disable an account (every session ends; the account and its audit records stay).
    Disable(UserNameArgs),
    /// Accounts and their roles.
    List,
}

/// Arguments of `users add`.
#[derive(Debug, Args)]
pub struct UserAddArgs {
    pub name: String,
    /// viewer (health, queues, counts), staff (the inbox of their sites) or admin.
    #[arg(long)]
    pub role: String,
    /// The sites whose inbox a staff user works (comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub sites: Vec<String>,
    /// Read the password from this environment variable instead of stdin.
    #[arg(long)]
    pub password_env: Option<String>,
    /// No password: the person signs in only through the hospital's identity provider
    /// (`[console.oidc]`), as the account of this name.
    #[arg(long, conflicts_with = "password_env")]
    pub sso_only: bool,
}

/// What an account that signs in only through the identity provider stores as its password
/// hash: not a PHC string, so no password ever matches it.
pub const NO_PASSWORD: &str = "!sso-only";

/// Arguments of `users passwd`.
#[derive(Debug, Args)]
pub struct UserPasswordArgs {
    pub name: String,
    #[arg(long)]
    pub password_env: Option<String>,
}

/// A user name.
#[derive(Debug, Args)]
pub struct UserNameArgs {
    pub name: String,
}

fn read_password(env: Option<&str>) -> anyhow::Result<String> {
    let password = match env {
        Some(var) => std::env::var(var)
            .map_err(|_| Failure::usage(format!("the environment variable `{var}` is not set")))?,
        None => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    Ok(password)
}

/// Runs an inbox command.
pub async fn run_inbox(
    config: &Path,
    clock: Arc<dyn Clock>,
    command: InboxCommand,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let store = open_store(&loaded).await?;
    let now = clock.now();
    let reengage = loaded.config.console.as_ref().and_then(|c| {
        c.reengage_template.as_ref().map(|name| ReengageTemplate {
            name: name.clone(),
            language: c.reengage_language.clone(),
        })
    });
    let result = match command {
        InboxCommand::List(a) => {
            let lines = store
                .conversations(&InboxFilter {
                    sites: None,
                    include_closed: a.all,
                })
                .await?;
            if o.json {
                o.json(&serde_json::json!({ "conversations": lines }));
            } else if lines.is_empty() {
                o.line("no conversations wait for staff");
            } else {
                for l in &lines {
                    o.line(format!(
                        "  conversation {:<5} {:<9} {:<9} site {:<12} {} message(s), last {}{}{}",
                        l.id,
                        l.reason.as_str(),
                        l.state.as_str(),
                        l.site.as_deref().unwrap_or("-"),
                        l.messages,
                        l.last_patient_at,
                        l.reply_due_at
                            .map(|d| format!(
                                ", answer due {d}{}",
                                if d <= now { " (OVERDUE)" } else { "" }
                            ))
                            .unwrap_or_default(),
                        l.assigned_to
                            .as_deref()
                            .map(|a| format!(", taken by {a}"))
                            .unwrap_or_default()
                    ));
                }
            }
            exit::OK
        }
        InboxCommand::Show(a) => {
            let who = actor(a.actor);
            let Some(d) = store.open_conversation(a.id, &who, "cli", now).await? else {
                store.close().await;
                return Err(Failure::usage(format!("there is no conversation {}", a.id)));
            };
            if o.json {
                o.json(&serde_json::json!({ "conversation": d }));
            } else {
                o.line(format!(
                    "conversation {} ({}, {}), WhatsApp +{}",
                    d.line.id,
                    d.line.reason.as_str(),
                    d.line.state.as_str(),
                    d.phone_e164.trim_start_matches('+')
                ));
                if let Some(ap) = &d.appointment {
                    o.line(format!(
                        "  appointment {} {} at {} ({}), patient {} {}",
                        ap.source,
                        ap.filler_id,
                        ap.start,
                        ap.status,
                        ap.given_name.as_deref().unwrap_or(""),
                        ap.family_name.as_deref().unwrap_or("")
                    ));
                }
                for m in &d.messages {
                    o.line(format!(
                        "  {} {:<3} {}{}: {}",
                        m.at,
                        m.direction,
                        m.staff_user
                            .as_deref()
                            .map(|u| format!("{u} "))
                            .unwrap_or_default(),
                        if m.direction == "out" {
                            format!(
                                "[{}{}]",
                                m.state,
                                m.status
                                    .as_deref()
                                    .map(|s| format!(", {s}"))
                                    .unwrap_or_default()
                            )
                        } else {
                            format!("[{}]", m.kind)
                        },
                        m.body.as_deref().unwrap_or("")
                    ));
                }
                o.line(if window_open(d.last_inbound_at, now) {
                    format!(
                        "  the customer service window is open until {}: `medrelay inbox reply {} --text ...`",
                        d.last_inbound_at.map(|t| t + SERVICE_WINDOW).unwrap_or(now),
                        d.line.id
                    )
                } else {
                    "  the customer service window is closed: only the re-engagement template may go (`--template`)".into()
                });
            }
            exit::OK
        }
        InboxCommand::Reply(a) => {
            let who = actor(a.actor);
            let Some(d) = store.open_conversation(a.id, &who, "cli", now).await? else {
                store.close().await;
                return Err(Failure::usage(format!("there is no conversation {}", a.id)));
            };
            let canned = match &a.canned {
                Some(name) => {
                    let found = loaded
                        .config
                        .console
                        .as_ref()
                        .and_then(|c| c.canned.iter().find(|x| &x.name == name));
                    match found {
                        Some(c) => Some(c.text.clone()),
                        None => {
                            store.close().await;
                            return Err(Failure::usage(format!(
                                "no prepared answer named `{name}` in [[console.canned]]"
                            )));
                        }
                    }
                }
                None => None,
            };
            if !a.template && a.text.is_none() && canned.is_none() {
                store.close().await;
                return Err(Failure::usage(
                    "say --text \"...\", --canned NAME or --template",
                ));
            }
            let text =
                (!a.template).then(|| canned.as_deref().or(a.text.as_deref()).unwrap_or_default());
            match answer(&store, reengage.as_ref(), &d, &who, text, now).await? {
                Ok(message) => {
                    o.line(format!(
                        "reply {message} queued for conversation {}: the service sends it at its next pass",
                        a.id
                    ));
                    exit::OK
                }
                Err(refusal) => {
                    store.close().await;
                    return Err(Failure::usage(refusal.message()));
                }
            }
        }
        InboxCommand::Act(a) => {
            let who = actor(a.actor);
            let Some(action) = StaffAction::parse(&a.action) else {
                store.close().await;
                return Err(Failure::usage(
                    "--action is confirm, cancel, reschedule or called",
                ));
            };
            match store.record_staff_action(a.id, &who, action, now).await? {
                Ok(()) => {
                    o.line(format!("recorded on conversation {}: {}", a.id, a.action));
                    exit::OK
                }
                Err(why) => {
                    store.close().await;
                    return Err(Failure::usage(why));
                }
            }
        }
        InboxCommand::Take(a) => {
            let who = actor(a.actor);
            state_change(&store, a.id, &who, ConversationState::Assigned, now, o).await?
        }
        InboxCommand::Close(a) => {
            let who = actor(a.actor);
            state_change(&store, a.id, &who, ConversationState::Closed, now, o).await?
        }
    };
    store.close().await;
    Ok(result)
}

async fn state_change(
    store: &medrelay_pipeline::store::Store,
    id: i64,
    who: &str,
    to: ConversationState,
    now: jiff::Timestamp,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    if store.set_conversation_state(id, who, to, now).await? {
        o.line(format!("conversation {id} is {}", to.as_str()));
        Ok(exit::OK)
    } else {
        Err(Failure::usage(format!(
            "there is no open conversation {id}"
        )))
    }
}

/// Runs a users command.
pub async fn run_users(
    config: &Path,
    clock: Arc<dyn Clock>,
    command: UsersCommand,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let store = open_store(&loaded).await?;
    let now = clock.now();
    let who = actor(None);
    let result = match command {
        UsersCommand::Add(a) => {
            let Some(role) = Role::parse(&a.role) else {
                store.close().await;
                return Err(Failure::usage("--role must be viewer, staff or admin"));
            };
            let unknown: Vec<&String> = a
                .sites
                .iter()
                .filter(|s| !loaded.compiled.sites.contains_key(s.as_str()))
                .collect();
            if !unknown.is_empty() {
                store.close().await;
                return Err(Failure::usage(format!(
                    "unknown site(s) {unknown:?}: --sites names [sites] of the configuration"
                )));
            }
            let hash = if a.sso_only {
                NO_PASSWORD.to_owned()
            } else {
                hash_password(&read_password(a.password_env.as_deref())?)
                    .map_err(|e| Failure::usage(e.to_string()))?
            };
            let sites = (!a.sites.is_empty()).then_some(a.sites.as_slice());
            if let Err(e) = store
                .add_console_user(&a.name, role, sites, &hash, &who, now)
                .await
            {
                store.close().await;
                return Err(Failure::usage(e.to_string()));
            }
            o.line(format!("console user {} added ({})", a.name, role.as_str()));
            exit::OK
        }
        UsersCommand::Passwd(a) => {
            let hash = hash_password(&read_password(a.password_env.as_deref())?)
                .map_err(|e| Failure::usage(e.to_string()))?;
            if !store
                .change_console_user(&a.name, Some(&hash), &who, now)
                .await?
            {
                store.close().await;
                return Err(Failure::usage(format!("no console user {}", a.name)));
            }
            o.line(format!(
                "password of {} changed; their sessions are ended",
                a.name
            ));
            exit::OK
        }
        UsersCommand::Disable(a) => {
            if !store.change_console_user(&a.name, None, &who, now).await? {
                store.close().await;
                return Err(Failure::usage(format!("no console user {}", a.name)));
            }
            o.line(format!("{} disabled; their sessions are ended", a.name));
            exit::OK
        }
        UsersCommand::List => {
            let users = store.console_users().await?;
            if o.json {
                o.json(&serde_json::json!({ "users": users }));
            } else {
                for u in &users {
                    o.line(format!(
                        "  {:<16} {:<7} sites {}{}",
                        u.name,
                        u.role.as_str(),
                        u.sites
                            .as_ref()
                            .map(|s| s.join(","))
                            .unwrap_or_else(|| "*".into()),
                        if u.disabled { " (disabled)" } else { "" }
                    ));
                }
            }
            exit::OK
        }
    };
    store.close().await;
    Ok(result)
}
