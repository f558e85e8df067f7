//! Directory commands: domains, sites, users, options, phones, queues.

use clap::Subcommand;
use presence_client::PresenceClient;
use presence_proto::v1;

use crate::common::*;

#[derive(Subcommand, Debug)]
pub(crate) enum DomainCmd {
    List,
    Get {
        id: String,
    },
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        dns_name: String,
    },
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        dns_name: Option<String>,
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    Delete {
        id: String,
        #[arg(long)]
        force: bool,
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum SiteCmd {
    List(Dom),
    Get {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
    Create {
        #[command(flatten)]
        d: Dom,
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        address: String,
        #[arg(long, default_value = "")]
        time_zone: String,
    },
    Update {
        #[command(flatten)]
        d: Dom,
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        time_zone: Option<String>,
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    Delete {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum UserCmd {
    /// List or search users (system users hidden unless --show-system).
    List {
        #[command(flatten)]
        d: Dom,
        #[arg(long, default_value = "")]
        search: String,
        #[arg(long)]
        scope: Option<String>,
        #[arg(long, default_value = "")]
        site: String,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value = "")]
        department: String,
        /// Also show conference bridges, auto attendants and call queues.
        #[arg(long)]
        show_system: bool,
        #[arg(long, default_value_t = 0)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    Get {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
    Create {
        #[command(flatten)]
        d: Dom,
        id: String,
        #[arg(long, default_value = "")]
        first_name: String,
        #[arg(long, default_value = "")]
        last_name: String,
        #[arg(long, default_value = "")]
        email: String,
        #[arg(long, default_value = "")]
        department: String,
        /// simple-user, basic-user, call-center-agent, call-center-supervisor, site-manager, office-manager.
        #[arg(long)]
        scope: Option<String>,
        /// person, conference-bridge, auto-attendant, call-queue.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value = "")]
        site: String,
        #[arg(long)]
        password: Option<String>,
    },
    Update {
        #[command(flatten)]
        d: Dom,
        id: String,
        #[arg(long)]
        first_name: Option<String>,
        #[arg(long)]
        last_name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        department: Option<String>,
        #[arg(long)]
        caller_id_name: Option<String>,
        #[arg(long)]
        scope: Option<String>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        password: Option<String>,
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    Delete {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
    /// Answering rules and voicemail back to defaults; sessions ended.
    Reset {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
    /// Issue a welcome token (also published for a mailer).
    Welcome {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
    /// End sessions; the next login must set a new password.
    ForceReset {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum OptionsCmd {
    Get {
        #[command(flatten)]
        d: Dom,
        user: String,
    },
    /// Replace answering rules: --rule CONDITION:TARGET[:TIMEOUT], in order.
    /// CONDITION is always|busy|no-answer|unregistered|dnd; TARGET is
    /// user=ID, number=+1555…, or voicemail.
    Rules {
        #[command(flatten)]
        d: Dom,
        user: String,
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    Voicemail {
        #[command(flatten)]
        d: Dom,
        user: String,
        #[arg(long)]
        enabled: Option<bool>,
        #[arg(long)]
        greeting: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        pin: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum PhoneCmd {
    List {
        #[command(flatten)]
        d: Dom,
        #[arg(long, default_value = "")]
        user: String,
    },
    Get {
        #[command(flatten)]
        d: Dom,
        mac: String,
    },
    /// Add a phone: --key INDEX:KIND:VALUE[:LABEL] for line keys.
    Add {
        #[command(flatten)]
        d: Dom,
        #[arg(long)]
        user: String,
        mac: String,
        #[arg(long, default_value = "")]
        model: String,
        #[arg(long, default_value = "")]
        label: String,
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    Update {
        #[command(flatten)]
        d: Dom,
        mac: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        label: Option<String>,
        /// Replaces every line key when given at least once.
        #[arg(long = "key")]
        keys: Vec<String>,
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    Delete {
        #[command(flatten)]
        d: Dom,
        mac: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum QueueCmd {
    List {
        #[command(flatten)]
        d: Dom,
        #[arg(long, default_value = "")]
        member: String,
    },
    Get {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
    /// Replace agents and supervisors.
    Members {
        #[command(flatten)]
        d: Dom,
        id: String,
        #[arg(long = "agent")]
        agents: Vec<String>,
        #[arg(long = "supervisor")]
        supervisors: Vec<String>,
    },
    Login {
        #[command(flatten)]
        d: Dom,
        id: String,
        agent: String,
    },
    Logout {
        #[command(flatten)]
        d: Dom,
        id: String,
        agent: String,
    },
}

/// Runs a `domains` command.
pub(crate) async fn domains(c: &mut PresenceClient, out: &Out, cmd: DomainCmd) -> CtlResult<()> {
    let d = match cmd {
        DomainCmd::List => {
            let r = c
                .directory
                .list_domains(v1::ListDomainsRequest {
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            return out.value(
                &r,
                DOMAIN_HEADERS,
                r.domains.iter().map(domain_row).collect(),
            );
        }
        DomainCmd::Delete {
            id,
            force,
            expected_version,
        } => {
            c.directory
                .delete_domain(v1::DeleteDomainRequest {
                    id: id.clone(),
                    expected_version,
                    force,
                })
                .await
                .map_err(status_err)?;
            out.done(&format!("domain {id} deleted"));
            return Ok(());
        }
        DomainCmd::Get { id } => c.directory.get_domain(v1::GetDomainRequest { id }).await,
        DomainCmd::Create { id, name, dns_name } => {
            c.directory
                .create_domain(v1::CreateDomainRequest { id, name, dns_name })
                .await
        }
        DomainCmd::Update {
            id,
            name,
            dns_name,
            expected_version,
        } => {
            c.directory
                .update_domain(v1::UpdateDomainRequest {
                    id,
                    expected_version,
                    name,
                    dns_name,
                })
                .await
        }
    }
    .map_err(status_err)?
    .into_inner();
    out.value(&d, DOMAIN_HEADERS, vec![domain_row(&d)])?;
    Ok(())
}

/// Runs a `sites` command.
pub(crate) async fn sites(c: &mut PresenceClient, out: &Out, cmd: SiteCmd) -> CtlResult<()> {
    let site_row = |s: &v1::Site| {
        vec![
            s.id.clone(),
            s.name.clone(),
            s.address.clone(),
            s.time_zone.clone(),
            s.version.to_string(),
        ]
    };
    let headers = &["id", "name", "address", "time zone", "version"];
    match cmd {
        SiteCmd::List(d) => {
            let r = c
                .directory
                .list_sites(v1::ListSitesRequest {
                    domain: d.domain,
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&r, headers, r.sites.iter().map(site_row).collect())?;
        }
        SiteCmd::Get { d, id } => {
            let s = c
                .directory
                .get_site(v1::GetSiteRequest {
                    domain: d.domain,
                    id,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&s, headers, vec![site_row(&s)])?;
        }
        SiteCmd::Create {
            d,
            id,
            name,
            address,
            time_zone,
        } => {
            let s = c
                .directory
                .create_site(v1::CreateSiteRequest {
                    domain: d.domain,
                    id,
                    name,
                    address,
                    time_zone,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&s, headers, vec![site_row(&s)])?;
        }
        SiteCmd::Update {
            d,
            id,
            name,
            address,
            time_zone,
            expected_version,
        } => {
            let s = c
                .directory
                .update_site(v1::UpdateSiteRequest {
                    domain: d.domain,
                    id,
                    expected_version,
                    name,
                    address,
                    time_zone,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&s, headers, vec![site_row(&s)])?;
        }
        SiteCmd::Delete { d, id } => {
            c.directory
                .delete_site(v1::DeleteSiteRequest {
                    domain: d.domain,
                    id: id.clone(),
                    expected_version: 0,
                })
                .await
                .map_err(status_err)?;
            out.done(&format!("site {id} deleted"));
        }
    }
    Ok(())
}

/// Runs a `users` command.
pub(crate) async fn users(c: &mut PresenceClient, out: &Out, cmd: UserCmd) -> CtlResult<()> {
    match cmd {
        UserCmd::List {
            d,
            search,
            scope,
            site,
            kind,
            department,
            show_system,
            page_size,
            page_token,
        } => {
            let r = c
                .directory
                .list_users(v1::ListUsersRequest {
                    domain: d.domain,
                    search,
                    scope: scope.as_deref().map(parse_scope).transpose()?.unwrap_or(0),
                    site,
                    kind: kind.as_deref().map(parse_kind).transpose()?.unwrap_or(0),
                    department,
                    hide_system_users: Some(!show_system),
                    page_size,
                    page_token,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&r, USER_HEADERS, user_rows(&r.users))?;
            if !out.json && !r.next_page_token.is_empty() {
                eprintln!("more: --page-token {}", r.next_page_token);
            }
        }
        UserCmd::Get { d, id } => {
            let u = c
                .directory
                .get_user(v1::GetUserRequest {
                    domain: d.domain,
                    id,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&u, USER_HEADERS, user_rows(std::slice::from_ref(&u)))?;
        }
        UserCmd::Create {
            d,
            id,
            first_name,
            last_name,
            email,
            department,
            scope,
            kind,
            site,
            password,
        } => {
            let u = c
                .directory
                .create_user(v1::CreateUserRequest {
                    domain: d.domain,
                    id,
                    kind: kind.as_deref().map(parse_kind).transpose()?.unwrap_or(0),
                    scope: scope.as_deref().map(parse_scope).transpose()?.unwrap_or(0),
                    site,
                    profile: Some(v1::Profile {
                        first_name,
                        last_name,
                        email,
                        department,
                        caller_id_name: String::new(),
                    }),
                    password,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&u, USER_HEADERS, user_rows(std::slice::from_ref(&u)))?;
        }
        UserCmd::Update {
            d,
            id,
            first_name,
            last_name,
            email,
            department,
            caller_id_name,
            scope,
            site,
            password,
            expected_version,
        } => {
            let u = c
                .directory
                .update_user(v1::UpdateUserRequest {
                    domain: d.domain,
                    id,
                    expected_version,
                    scope: scope.as_deref().map(parse_scope).transpose()?,
                    site,
                    profile: Some(v1::ProfileUpdate {
                        first_name,
                        last_name,
                        email,
                        department,
                        caller_id_name,
                    }),
                    password,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&u, USER_HEADERS, user_rows(std::slice::from_ref(&u)))?;
        }
        UserCmd::Delete { d, id } => {
            c.directory
                .delete_user(v1::DeleteUserRequest {
                    domain: d.domain,
                    id: id.clone(),
                    expected_version: 0,
                })
                .await
                .map_err(status_err)?;
            out.done(&format!("user {id} deleted"));
        }
        UserCmd::Reset { d, id } => {
            let u = c
                .directory
                .reset_user(v1::ResetUserRequest {
                    domain: d.domain,
                    user: id,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&u, USER_HEADERS, user_rows(std::slice::from_ref(&u)))?;
        }
        UserCmd::Welcome { d, id } => {
            let r = c
                .directory
                .send_welcome(v1::SendWelcomeRequest {
                    domain: d.domain,
                    user: id,
                    ttl_seconds: 0,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(
                &r,
                &["welcome token", "expires at (ms)"],
                vec![vec![r.welcome_token.clone(), r.expires_at_ms.to_string()]],
            )?;
        }
        UserCmd::ForceReset { d, id } => {
            let u = c
                .directory
                .force_password_reset(v1::ForcePasswordResetRequest {
                    domain: d.domain,
                    user: id,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&u, USER_HEADERS, user_rows(std::slice::from_ref(&u)))?;
        }
    }
    Ok(())
}

/// Runs an `options` command.
pub(crate) async fn options(c: &mut PresenceClient, out: &Out, cmd: OptionsCmd) -> CtlResult<()> {
    let o = match cmd {
        OptionsCmd::Get { d, user } => {
            c.directory
                .get_user_options(v1::GetUserOptionsRequest {
                    domain: d.domain,
                    user,
                })
                .await
        }
        OptionsCmd::Rules { d, user, rules } => {
            let answering_rules = rules
                .iter()
                .map(|r| parse_rule(r))
                .collect::<CtlResult<Vec<_>>>()?;
            c.directory
                .set_answering_rules(v1::SetAnsweringRulesRequest {
                    domain: d.domain,
                    user,
                    expected_version: 0,
                    answering_rules,
                })
                .await
        }
        OptionsCmd::Voicemail {
            d,
            user,
            enabled,
            greeting,
            email,
            pin,
        } => {
            c.directory
                .update_voicemail(v1::UpdateVoicemailRequest {
                    domain: d.domain,
                    user,
                    expected_version: 0,
                    enabled,
                    greeting,
                    notification_email: email,
                    pin,
                })
                .await
        }
    }
    .map_err(status_err)?
    .into_inner();
    out.value(&o, &["option", "value"], options_rows(&o))?;
    Ok(())
}

/// Runs a `phones` command.
pub(crate) async fn phones(c: &mut PresenceClient, out: &Out, cmd: PhoneCmd) -> CtlResult<()> {
    match cmd {
        PhoneCmd::List { d, user } => {
            let r = c
                .directory
                .list_phones(v1::ListPhonesRequest {
                    domain: d.domain,
                    user,
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&r, PHONE_HEADERS, phone_rows(&r.phones))?;
        }
        PhoneCmd::Get { d, mac } => {
            let p = c
                .directory
                .get_phone(v1::GetPhoneRequest {
                    domain: d.domain,
                    mac,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&p, PHONE_HEADERS, phone_rows(std::slice::from_ref(&p)))?;
        }
        PhoneCmd::Add {
            d,
            user,
            mac,
            model,
            label,
            keys,
        } => {
            let line_keys = keys
                .iter()
                .map(|k| parse_key(k))
                .collect::<CtlResult<Vec<_>>>()?;
            let p = c
                .directory
                .add_phone(v1::AddPhoneRequest {
                    domain: d.domain,
                    user,
                    mac,
                    model,
                    label,
                    line_keys,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&p, PHONE_HEADERS, phone_rows(std::slice::from_ref(&p)))?;
        }
        PhoneCmd::Update {
            d,
            mac,
            user,
            model,
            label,
            keys,
            expected_version,
        } => {
            let line_keys = keys
                .iter()
                .map(|k| parse_key(k))
                .collect::<CtlResult<Vec<_>>>()?;
            let p = c
                .directory
                .update_phone(v1::UpdatePhoneRequest {
                    domain: d.domain,
                    mac,
                    expected_version,
                    model,
                    label,
                    replace_line_keys: !line_keys.is_empty(),
                    line_keys,
                    user,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            out.value(&p, PHONE_HEADERS, phone_rows(std::slice::from_ref(&p)))?;
        }
        PhoneCmd::Delete { d, mac } => {
            c.directory
                .delete_phone(v1::DeletePhoneRequest {
                    domain: d.domain,
                    mac: mac.clone(),
                    expected_version: 0,
                })
                .await
                .map_err(status_err)?;
            out.done(&format!("phone {mac} deleted"));
        }
    }
    Ok(())
}

/// Runs a `queues` command.
pub(crate) async fn queues(c: &mut PresenceClient, out: &Out, cmd: QueueCmd) -> CtlResult<()> {
    let q = match cmd {
        QueueCmd::List { d, member } => {
            let r = c
                .directory
                .list_queues(v1::ListQueuesRequest {
                    domain: d.domain,
                    member,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            return out.value(&r, QUEUE_HEADERS, queue_rows(&r.queues));
        }
        QueueCmd::Get { d, id } => {
            c.directory
                .get_queue(v1::GetQueueRequest {
                    domain: d.domain,
                    id,
                })
                .await
        }
        QueueCmd::Members {
            d,
            id,
            agents,
            supervisors,
        } => {
            c.directory
                .set_queue_members(v1::SetQueueMembersRequest {
                    domain: d.domain,
                    id,
                    expected_version: 0,
                    agents,
                    supervisors,
                })
                .await
        }
        QueueCmd::Login { d, id, agent } => {
            c.directory
                .set_queue_login(v1::SetQueueLoginRequest {
                    domain: d.domain,
                    id,
                    agent,
                    logged_in: true,
                })
                .await
        }
        QueueCmd::Logout { d, id, agent } => {
            c.directory
                .set_queue_login(v1::SetQueueLoginRequest {
                    domain: d.domain,
                    id,
                    agent,
                    logged_in: false,
                })
                .await
        }
    }
    .map_err(status_err)?
    .into_inner();
    out.value(&q, QUEUE_HEADERS, queue_rows(std::slice::from_ref(&q)))?;
    Ok(())
}
