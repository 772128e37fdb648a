//! The private plugin inventory's commands: `plugsync inventory publish|group`, and the
//! discovery commands `plugsync search`, `plugsync groups`, `plugsync outdated`. Arguments
//! and printing only (a table, or `-o json`); the work is in `crate::app::inventory`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use plugsync_core::error::Error;
use plugsync_core::inventory::{parse_name_version, Group, GroupEntry, PublishReport};

use super::OutputFormat;
use crate::app::inventory::{self as app, Access, Source};

/// `plugsync inventory …`: write to a private inventory.
#[derive(Debug, Subcommand)]
pub(super) enum InventoryCommand {
    /// Push `.difypkg` files (or the resolved plugins of a plugins.yaml) to an OCI registry by
    /// digest, add them to the inventory there, and push the inventory signed. What is
    /// already there is not pushed again.
    Publish(PublishArgs),
    /// Define a group: a named, versioned set of plugin versions installed together.
    Group(GroupArgs),
    /// Copy named marketplace plugins (`author/name@version`), or everything a plugins.yaml
    /// resolves (--repo), into the private registry and inventory: for sites that prepare
    /// offline.
    Mirror(MirrorArgs),
}

#[derive(Debug, Args)]
pub(super) struct MirrorArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Marketplace plugins to copy, each `author/name@version`.
    #[arg(value_name = "PLUGIN@VERSION")]
    plugins: Vec<String>,
    /// The marketplace to copy from.
    #[arg(long, default_value = plugsync_core::model::DEFAULT_MARKETPLACE)]
    marketplace: url::Url,
    /// Also copy every plugin a plugins.yaml resolves to (its folder).
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
    #[command(flatten)]
    fetch: super::FetchArgs,
}

/// Where to publish.
#[derive(Debug, Args)]
pub(super) struct TargetArgs {
    /// The inventory tag: `oci://host[:port]/repository:tag`.
    #[arg(long, value_name = "OCI_REF")]
    to: String,
    /// The P-256 private key (PEM, PKCS#8 or SEC1) that signs the inventory (cosign's
    /// key-pair scheme: `cosign verify --key` checks it with the public half).
    #[arg(long, value_name = "KEY_PEM")]
    key: PathBuf,
    #[command(flatten)]
    access: AccessArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

/// How to reach the registry.
#[derive(Debug, Args)]
pub(super) struct AccessArgs {
    /// Allow plain HTTP to the registry (loopback or air-gapped registries without TLS).
    #[arg(long)]
    insecure: bool,
    /// Bound on each registry request, e.g. `30s`.
    #[arg(long = "registry-timeout", default_value = "60s", value_parser = humantime::parse_duration)]
    registry_timeout: Duration,
}

impl AccessArgs {
    fn access(&self) -> Access {
        Access {
            insecure: self.insecure,
            timeout: self.registry_timeout,
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct PublishArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The `.difypkg` files to publish.
    #[arg(value_name = "PKG")]
    packages: Vec<PathBuf>,
    /// Also publish every plugin a plugins.yaml resolves to (its folder; packages from the
    /// lock and the package cache, fetched when missing).
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
    #[command(flatten)]
    fetch: super::FetchArgs,
}

#[derive(Debug, Args)]
pub(super) struct GroupArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The group, `name:version` (e.g. `base:1.0`).
    #[arg(value_name = "NAME:VERSION")]
    group: String,
    /// Mandatory plugins, each `author/name@version`.
    #[arg(value_name = "PLUGIN@VERSION")]
    plugins: Vec<String>,
    /// Optional plugins (installed only when asked for), each `author/name@version`.
    #[arg(long, value_name = "PLUGIN@VERSION")]
    optional: Vec<String>,
    /// What the group is for.
    #[arg(long, default_value = "")]
    description: String,
}

/// Which inventory to read, and how fresh it must be.
#[derive(Debug, Args)]
pub(super) struct SourceArgs {
    /// The inventory: `oci://host[:port]/repository:tag`, or pinned `…@sha256:<hex>`
    /// [`outdated` default: plugins.yaml's spec.sources.inventory].
    #[arg(long, env = "PLUGSYNC_INVENTORY", value_name = "OCI_REF")]
    inventory: Option<String>,
    /// The public key (PEM) the inventory's signature must verify with (`cosign.pub`, or
    /// the publisher's public key).
    #[arg(
        long = "inventory-key",
        env = "PLUGSYNC_INVENTORY_KEY",
        value_name = "KEY_PEM"
    )]
    key: Option<PathBuf>,
    /// How long the cached inventory is used without asking the registry, e.g. `30m`
    /// [default: 30m].
    #[arg(long = "inventory-ttl", value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Pull the inventory again, whatever the cache holds.
    #[arg(long)]
    refresh: bool,
    /// Cache folder [default: $PLUGSYNC_CACHE_DIR, else the user cache dir].
    #[arg(long, env = "PLUGSYNC_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    access: AccessArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

impl SourceArgs {
    /// The inventory named by the flags; `repo`'s plugins.yaml (spec.sources.inventory)
    /// fills in what they leave out, when given.
    fn source(&self, repo: Option<&Path>) -> Result<Source, Error> {
        let declared = match repo {
            Some(plugins) if self.inventory.is_none() || self.key.is_none() => {
                app::declared_source(plugins)?
            }
            _ => None,
        };
        let dir = repo.and_then(Path::parent).unwrap_or(Path::new("."));
        let reference = match (&self.inventory, &declared) {
            (Some(r), _) => r.clone(),
            (None, Some(d)) => d.url.clone(),
            (None, None) => {
                return Err(Error::Usage(
                    "which inventory? give --inventory oci://host/repository:tag (or PLUGSYNC_INVENTORY)"
                        .into(),
                ))
            }
        };
        let key = match (&self.key, &declared) {
            (Some(k), _) => k.clone(),
            (None, Some(d)) => dir.join(&d.key),
            (None, None) => {
                return Err(Error::Usage(
                    "which key verifies the inventory? give --inventory-key KEY_PEM (or PLUGSYNC_INVENTORY_KEY)"
                        .into(),
                ))
            }
        };
        Ok(Source {
            reference,
            key,
            access: Access {
                insecure: self.access.insecure || declared.as_ref().is_some_and(|d| d.insecure),
                timeout: self.access.registry_timeout,
            },
            ttl: self
                .ttl
                .or(declared.as_ref().and_then(|d| d.ttl))
                .unwrap_or(plugsync_core::inventory::DEFAULT_TTL),
            refresh: self.refresh,
            cache_dir: self.cache_dir.clone(),
        })
    }
}

/// `plugsync search [TEXT]`.
#[derive(Debug, Args)]
pub(super) struct SearchArgs {
    /// Only plugins whose name or description contains this (case-insensitive).
    #[arg(default_value = "")]
    text: String,
    #[command(flatten)]
    source: SourceArgs,
}

/// `plugsync groups`.
#[derive(Debug, Args)]
pub(super) struct GroupsArgs {
    #[command(flatten)]
    source: SourceArgs,
}

/// `plugsync outdated`.
#[derive(Debug, Args)]
pub(super) struct OutdatedArgs {
    #[command(flatten)]
    repo: super::RepoArgs,
    #[command(flatten)]
    source: SourceArgs,
    /// Also ask the Dify marketplace of plugins.yaml (`spec.sources.marketplace`) for each
    /// declared plugin's newest version; without an inventory, ask only the marketplace.
    #[arg(long)]
    marketplace: bool,
}

/// Prints rows as columns padded to the widest cell (the last column unpadded).
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        let last = cells.len() - 1;
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn parse_plugin(s: &str) -> Result<(String, String), Error> {
    match s.rsplit_once('@') {
        Some((p, v)) if !p.is_empty() && !v.is_empty() => Ok((p.to_owned(), v.to_owned())),
        _ => Err(Error::Usage(format!(
            "`{s}`: expected a plugin version as author/name@version (e.g. langgenius/agent@0.0.14)"
        ))),
    }
}

fn print_report(report: &PublishReport, output: OutputFormat) {
    match output {
        OutputFormat::Json => print_json(&json!(report)),
        OutputFormat::Text => {
            if !report.packages.is_empty() {
                let rows: Vec<Vec<String>> = report
                    .packages
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.version.clone(),
                            if p.pushed { "pushed" } else { "present" }.to_owned(),
                            p.signature.clone(),
                            p.artifact.clone(),
                        ]
                    })
                    .collect();
                table(
                    &["PLUGIN", "VERSION", "PACKAGE", "SIGNATURE", "ARTIFACT"],
                    &rows,
                );
            }
            for g in &report.groups_added {
                println!("group {g} added");
            }
            println!(
                "inventory {}@{} ({})",
                report.reference,
                report.digest,
                if report.inventory_pushed {
                    "pushed, signed"
                } else {
                    "unchanged, nothing pushed"
                }
            );
        }
    }
}

pub(super) async fn inventory_command(cmd: InventoryCommand) -> Result<ExitCode, Error> {
    match cmd {
        InventoryCommand::Publish(args) => {
            let packages = match &args.repo {
                Some(dir) => resolved_packages(dir.clone(), &args.fetch).await?,
                None => Vec::new(),
            };
            if args.packages.is_empty() && packages.is_empty() {
                return Err(Error::Usage(
                    "nothing to publish: name .difypkg files, or --repo DIR for a plugins.yaml's plugins"
                        .into(),
                ));
            }
            let report = app::publish(
                &args.target.to,
                &args.target.key,
                args.target.access.access(),
                args.packages,
                packages,
                Vec::new(),
            )
            .await?;
            print_report(&report, args.target.output);
            Ok(ExitCode::SUCCESS)
        }
        InventoryCommand::Mirror(args) => {
            let mut packages = match &args.repo {
                Some(dir) => resolved_packages(dir.clone(), &args.fetch).await?,
                None => Vec::new(),
            };
            if !args.plugins.is_empty() {
                let fetchers = plugsync_core::fetch::Fetchers::discover(
                    args.fetch.settings(),
                    args.marketplace.clone(),
                );
                for p in &args.plugins {
                    let (plugin, version) = parse_plugin(p)?;
                    let (author, name) = plugin.split_once('/').ok_or_else(|| {
                        Error::Usage(format!("`{p}`: expected author/name@version"))
                    })?;
                    let url = plugsync_core::model::marketplace_download_url(
                        &args.marketplace,
                        author,
                        name,
                        &version,
                    );
                    let bytes = fetchers
                        .fetch(&url, &plugsync_core::fetch::NoProgress)
                        .await
                        .map_err(|e| Error::Usage(format!("{p}: {e}")))?;
                    packages.push(plugsync_core::inventory::publish::PackageInput {
                        label: format!("{p} (marketplace)"),
                        bytes,
                    });
                }
            }
            if packages.is_empty() {
                return Err(Error::Usage(
                    "nothing to mirror: name marketplace plugins as author/name@version, or --repo DIR"
                        .into(),
                ));
            }
            let report = app::publish(
                &args.target.to,
                &args.target.key,
                args.target.access.access(),
                Vec::new(),
                packages,
                Vec::new(),
            )
            .await?;
            print_report(&report, args.target.output);
            Ok(ExitCode::SUCCESS)
        }
        InventoryCommand::Group(args) => {
            let (name, version) = parse_name_version(&args.group)
                .filter(|(n, _)| !n.contains('/'))
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "`{}`: expected the group as name:version (e.g. base:1.0)",
                        args.group
                    ))
                })?;
            let mut entries = Vec::new();
            for (list, mandatory) in [(&args.plugins, true), (&args.optional, false)] {
                for p in list {
                    let (plugin, version) = parse_plugin(p)?;
                    entries.push(GroupEntry {
                        plugin,
                        version,
                        mandatory,
                    });
                }
            }
            if entries.is_empty() {
                return Err(Error::Usage(
                    "a group needs at least one plugin (author/name@version)".into(),
                ));
            }
            let group = Group {
                name,
                version,
                description: args.description,
                entries,
            };
            let report = app::publish(
                &args.target.to,
                &args.target.key,
                args.target.access.access(),
                Vec::new(),
                Vec::new(),
                vec![group],
            )
            .await?;
            print_report(&report, args.target.output);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The packages of every plugin `dir`'s plugins.yaml resolves to (through the lock and the
/// package cache, as `plugsync render` resolves them).
async fn resolved_packages(
    dir: PathBuf,
    fetch: &super::FetchArgs,
) -> Result<Vec<plugsync_core::inventory::publish::PackageInput>, Error> {
    let resolver = super::resolver_for(fetch)?;
    crate::app::off_runtime(move |runtime| {
        let snapshot =
            plugsync_core::source::WorkTree::new(&dir).map_err(|e| Error::Usage(e.to_string()))?;
        let state = plugsync_core::pipeline::resolved_state_blocking(
            runtime,
            &snapshot,
            plugsync_core::load::PLUGINS_FILE,
            &resolver,
        )?
        .ok_or_else(|| {
            Error::Usage(format!(
                "{}: no {}",
                dir.display(),
                plugsync_core::load::PLUGINS_FILE
            ))
        })?;
        Ok(state
            .resolution
            .plugins
            .iter()
            .map(|p| plugsync_core::inventory::publish::PackageInput {
                label: format!("{} ({})", p.locked.name, dir.display()),
                bytes: p.bytes.as_ref().clone(),
            })
            .collect())
    })
    .await
}

pub(super) async fn search_command(args: SearchArgs) -> Result<ExitCode, Error> {
    let source = args.source.source(None)?;
    let reference = source.reference.clone();
    let loaded = app::load(source).await?;
    let hits = loaded.inventory.search(&args.text);
    match args.source.output {
        OutputFormat::Json => print_json(&json!({
            "inventory": reference,
            "digest": loaded.digest,
            "plugins": hits,
        })),
        OutputFormat::Text => {
            let rows: Vec<Vec<String>> = hits
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        h.newest.clone(),
                        h.versions.len().to_string(),
                        h.signature.clone(),
                        h.description.clone(),
                    ]
                })
                .collect();
            table(
                &["NAME", "NEWEST", "VERSIONS", "SIGNATURE", "DESCRIPTION"],
                &rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn groups_command(args: GroupsArgs) -> Result<ExitCode, Error> {
    let source = args.source.source(None)?;
    let reference = source.reference.clone();
    let loaded = app::load(source).await?;
    let groups = &loaded.inventory.groups;
    match args.source.output {
        OutputFormat::Json => print_json(&json!({
            "inventory": reference,
            "digest": loaded.digest,
            "groups": groups,
        })),
        OutputFormat::Text => {
            let rows: Vec<Vec<String>> = groups
                .iter()
                .flat_map(|g| {
                    g.entries.iter().map(move |e| {
                        vec![
                            g.id(),
                            e.plugin.clone(),
                            e.version.clone(),
                            if e.mandatory { "mandatory" } else { "optional" }.to_owned(),
                        ]
                    })
                })
                .collect();
            table(&["GROUP", "PLUGIN", "VERSION", "MANDATORY"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn outdated_command(args: OutdatedArgs) -> Result<ExitCode, Error> {
    let plugins = args.repo.plugins_path();
    let declared = crate::app::inventory::declared_versions(&plugins)?;
    let sources = app::declared_sources(&plugins)?;
    // (name, declared version, newest version, where the newest is)
    let mut rows: Vec<(String, String, String, &str)> = Vec::new();
    let mut inventory = (None, None);
    let ask_inventory =
        !args.marketplace || args.source.inventory.is_some() || sources.inventory.is_some();
    if ask_inventory {
        let source = args.source.source(Some(&plugins))?;
        let reference = source.reference.clone();
        let loaded = app::load(source).await?;
        for (name, version) in &declared {
            if let Some(newest) = loaded.inventory.newest(name) {
                if plugsync_core::inventory::compare_versions(&newest.version, version).is_gt() {
                    rows.push((
                        name.clone(),
                        version.clone(),
                        newest.version.clone(),
                        "inventory",
                    ));
                }
            }
        }
        inventory = (Some(reference), Some(loaded.digest));
    }
    if args.marketplace {
        let names: Vec<String> = declared.iter().map(|(name, _)| name.clone()).collect();
        let newest = app::marketplace_versions(
            &sources.marketplace,
            &names,
            args.source.access.registry_timeout,
        )
        .await?;
        for (name, version) in &declared {
            if let Some(newest) = newest.get(name) {
                if plugsync_core::inventory::compare_versions(newest, version).is_gt() {
                    rows.push((name.clone(), version.clone(), newest.clone(), "marketplace"));
                }
            }
        }
    }
    match args.source.output {
        OutputFormat::Json => print_json(&json!({
            "inventory": inventory.0,
            "digest": inventory.1,
            "marketplace": args.marketplace.then_some(&sources.marketplace),
            "outdated": rows
                .iter()
                .map(|(n, c, l, s)| json!({"name": n, "declared": c, "newest": l, "source": s}))
                .collect::<Vec<_>>(),
        })),
        OutputFormat::Text => table(
            &["NAME", "DECLARED", "NEWEST", "SOURCE"],
            &rows
                .iter()
                .map(|(n, c, l, s)| vec![n.clone(), c.clone(), l.clone(), (*s).to_owned()])
                .collect::<Vec<_>>(),
        ),
    }
    Ok(ExitCode::SUCCESS)
}
