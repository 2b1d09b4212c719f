//! `concord shards`: the operator's side of a deployment of several groups
//! (DESIGN §11). `init` writes the first map, for `concord serve
//! --shard-map`; `show` prints the map a node follows; `add-group` and
//! `move` write the next version to a node of every group (each node
//! writes it to its group's database, and the group's other nodes follow
//! within a second); a move then hands the shard's idempotency keys from
//! the group that gave it up to the group that took it. `sync` pushes the
//! newest version to every group and finishes any handover cut short.

use std::time::Duration;

use anyhow::Context;
use backon::BackoffBuilder;
use concord_proto::v1 as pb;

use super::admin::{Auth, Client, Remote, asking, connect, explain, moment};
use crate::model::now_ms;
use crate::shard::{DEFAULT_SHARDS, Group, MARGIN_MS, MIN_SWITCH_DELAY_MS, Owner, Shard, ShardMap};

#[derive(clap::Args, Debug)]
pub struct ShardsArgs {
    #[command(flatten)]
    remote: Remote,

    #[command(subcommand)]
    command: ShardsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ShardsCommand {
    /// Writes the first map of a deployment.
    ///
    /// The shards are split among the groups from now on, the first
    /// group's first. Start each group's nodes with `--shard-map FILE
    /// --group NAME`.
    Init {
        /// A group: its name and its nodes' addresses. Repeatable.
        ///
        /// The addresses as clients and other nodes reach them (their
        /// --advertise-url): `g1=http://10.0.0.1:7400,http://10.0.0.2:7400`.
        #[arg(long = "group", required = true, value_parser = parse_group)]
        groups: Vec<Group>,
        /// Shards: a power of two up to 4096.
        ///
        /// Fixed for the deployment's life. More shards let load move in
        /// smaller pieces.
        #[arg(long, default_value_t = DEFAULT_SHARDS)]
        shards: u16,
        /// Where to write the map (JSON); standard output without.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// The map the node at --coordinator follows.
    Show {
        /// Print one JSON object.
        ///
        /// Its fields: `group` (the node's), `now_ms` and `map` (as `concord
        /// shards init` writes it).
        #[arg(long)]
        json: bool,
    },
    /// Adds a group that owns no shard yet.
    ///
    /// Then start its nodes with the map written to --out and `--group
    /// NAME`, and move shards to it.
    AddGroup {
        /// The new group's name, unique in the map.
        name: String,
        /// A node of the new group, by the URL the others reach it at;
        /// repeat for each.
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
        /// Where to write the new version, for the new group's nodes.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Moves shards to a group from a switch time a few seconds ahead.
    ///
    /// The transactions minted before the switch finish where they are;
    /// the shards' idempotency keys are handed over after it.
    Move {
        /// The shards to move.
        #[arg(required = true)]
        shards: Vec<u16>,
        /// The group that takes them.
        #[arg(long)]
        to: String,
        /// How far ahead the switch is, in milliseconds.
        ///
        /// At least 4000: every node reads the new map first.
        #[arg(long, default_value_t = 5_000)]
        switch_in_ms: u64,
    },
    /// Calls off the moves of shards whose switch time has not come.
    ///
    /// Each shard goes back to the group it was leaving one millisecond
    /// after its switch (a version may only add to the map), so the group
    /// it was going to never takes its keys. At least 4000 ms before the
    /// switch, or the move must happen and be moved back.
    Cancel {
        /// The moving shards.
        #[arg(required = true)]
        shards: Vec<u16>,
    },
    /// Writes the newest map any group holds to every group.
    ///
    /// Then finishes any handover of keys a move left undone.
    Sync,
}

/// How long a step keeps retrying a group that does not answer.
const PATIENCE: Duration = Duration::from_secs(60);

pub async fn run(args: ShardsArgs) -> anyhow::Result<()> {
    let auth = Auth::new(args.remote.token.as_deref())?;
    match args.command {
        ShardsCommand::Init {
            groups,
            shards,
            out,
        } => {
            let map =
                ShardMap::split(shards, groups, now_ms()).map_err(|e| anyhow::anyhow!("{e}"))?;
            write_map(&map, out.as_deref())
        }
        ShardsCommand::Show { json } => {
            let url = args.remote.url();
            let mut client = connect(&args.remote, &url)?;
            let held = client
                .get_shard_map(pb::GetShardMapRequest {})
                .await
                .map_err(asking(&url))?
                .into_inner();
            if json {
                let shown = serde_json::json!({
                    "group": held.group,
                    "now_ms": held.now_ms,
                    "map": from_wire(held.map)?,
                });
                println!("{shown}");
            } else {
                print!("{}", show_text(&held)?);
            }
            Ok(())
        }
        ShardsCommand::AddGroup { name, nodes, out } => {
            let deployment = Deployment::read(&args.remote, &auth).await?;
            let next = deployment
                .map
                .with_group(Group { name, nodes })
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            deployment.push(&next, &[]).await?;
            write_map(&next, Some(&out))?;
            println!(
                "map version {} written to every group; start the new group's nodes with \
                 --shard-map {}",
                next.version,
                out.display()
            );
            Ok(())
        }
        ShardsCommand::Move {
            shards,
            to,
            switch_in_ms,
        } => {
            let deployment = Deployment::read(&args.remote, &auth).await?;
            deployment.move_shards(&shards, &to, switch_in_ms).await
        }
        ShardsCommand::Cancel { shards } => {
            let deployment = Deployment::read(&args.remote, &auth).await?;
            deployment.cancel_moves(&shards).await
        }
        ShardsCommand::Sync => {
            let deployment = Deployment::read(&args.remote, &auth).await?;
            deployment.push(&deployment.map, &[]).await?;
            deployment.finish_handovers().await
        }
    }
}

/// `NAME=URL[,URL...]`, a group of `concord shards init`.
fn parse_group(value: &str) -> Result<Group, String> {
    let (name, nodes) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?}: write NAME=URL[,URL...]"))?;
    let nodes: Vec<String> = nodes.split(',').map(str::to_owned).collect();
    for node in &nodes {
        crate::api::validate::endpoint("--group", node).map_err(|s| s.message().to_owned())?;
    }
    Ok(Group {
        name: name.to_owned(),
        nodes,
    })
}

fn write_map(map: &ShardMap, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(map).context("encoding the map")?;
    match out {
        Some(path) => {
            std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
        }
        None => {
            println!("{text}");
            Ok(())
        }
    }
}

/// The deployment as read through its nodes: the newest map any group
/// holds, and how to reach each group.
struct Deployment<'a> {
    remote: &'a Remote,
    auth: &'a Auth,
    map: ShardMap,
}

impl<'a> Deployment<'a> {
    /// Reads the map from --coordinator, then from a node of every group
    /// it names, and keeps the newest.
    async fn read(remote: &'a Remote, auth: &'a Auth) -> anyhow::Result<Self> {
        let url = remote.url();
        let mut client = connect(remote, &url)?;
        let first = client
            .get_shard_map(pb::GetShardMapRequest {})
            .await
            .map_err(asking(&url))?
            .into_inner();
        let mut deployment = Self {
            remote,
            auth,
            map: from_wire(first.map)?,
        };
        for group in deployment.map.groups.clone() {
            let held = deployment.ask(&group, "reading the map", get_map).await?;
            let map = from_wire(held.map)?;
            deployment.map = deployment.map.clone().newest(map);
        }
        Ok(deployment)
    }

    fn group(&self, name: &str) -> anyhow::Result<&Group> {
        self.map
            .groups
            .iter()
            .find(|g| g.name == name)
            .with_context(|| {
                format!(
                    "no group named {name:?} in map version {}",
                    self.map.version
                )
            })
    }

    /// Calls a node of `group`, each in turn, retrying with backoff while
    /// none answers (UNAVAILABLE, deadline exceeded) for up to
    /// [`PATIENCE`]; any other answer is final.
    async fn ask<T, F, Fut>(&self, group: &Group, what: &str, mut call: F) -> anyhow::Result<T>
    where
        F: FnMut(Client, &'a Auth) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times()
            .build();
        let give_up = tokio::time::Instant::now() + PATIENCE;
        let mut turn = 0usize;
        loop {
            let node = &group.nodes[turn % group.nodes.len()];
            turn += 1;
            let client = connect(self.remote, node)?;
            match call(client, self.auth).await {
                Ok(answer) => return Ok(answer),
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ) && tokio::time::Instant::now() < give_up =>
                {
                    tracing::debug!(group = %group.name, node, %status, "{what}: retrying");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(2))).await;
                }
                Err(status) => {
                    return Err(asking(node)(status))
                        .with_context(|| format!("{what} on group {:?} ({node})", group.name));
                }
            }
        }
    }

    /// Writes `map` to a node of every group the deployment had when read,
    /// those in `first` first. A group `map` adds has no node running yet:
    /// its nodes start with the map as their `--shard-map`.
    async fn push(&self, map: &ShardMap, first: &[&str]) -> anyhow::Result<()> {
        let mut order: Vec<&Group> = self.map.groups.iter().collect();
        order.sort_by_key(|g| !first.contains(&g.name.as_str()));
        for group in order {
            let wire = to_wire(map);
            let held = self
                .ask(group, "writing the map", |mut client, auth| {
                    let request = auth.request(pb::PutShardMapRequest {
                        map: Some(wire.clone()),
                    });
                    async move { client.put_shard_map(request).await }
                })
                .await?
                .into_inner();
            if held.version < map.version {
                anyhow::bail!(
                    "group {:?} holds map version {} after writing {}",
                    group.name,
                    held.version,
                    map.version
                );
            }
        }
        Ok(())
    }

    /// §11's move: the next version with each shard owned by `to` from a
    /// switch time ahead, written to every group (the old owners first);
    /// then, once the switch time and the margin have passed, each shard's
    /// keys handed over.
    async fn move_shards(&self, shards: &[u16], to: &str, switch_in_ms: u64) -> anyhow::Result<()> {
        self.group(to)?;
        if switch_in_ms < MIN_SWITCH_DELAY_MS {
            anyhow::bail!(
                "--switch-in-ms {switch_in_ms}: at least {MIN_SWITCH_DELAY_MS}, so that every \
                 node reads the new map before its old owner stops taking keys"
            );
        }
        let mut from_groups: Vec<String> = Vec::new();
        for &shard in shards {
            let owner = self.last_owner(shard)?;
            if owner.from_ms > now_ms() {
                anyhow::bail!("shard {shard} is already moving (to {:?})", owner.group);
            }
            if !from_groups.contains(&owner.group) {
                from_groups.push(owner.group.clone());
            }
        }
        // The switch time on the old owners' clocks, the latest of them:
        // every one of them still owns the shards until then.
        let mut switch_ms = 0;
        for name in &from_groups {
            let held = self
                .ask(self.group(name)?, "reading the clock", get_map)
                .await?;
            switch_ms = switch_ms.max(held.now_ms + switch_in_ms);
        }
        let mut next = self.map.clone();
        for &shard in shards {
            next = next
                .with_move(Shard(shard), to, switch_ms)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        next.version = self.map.version + 1;
        let first: Vec<&str> = from_groups.iter().map(String::as_str).collect();
        if let Err(error) = self.push(&next, &first).await {
            return Err(error.context(format!(
                "map version {} (shards {shards:?} to {to:?} at {switch_ms} ms) did not reach \
                 every group; once they are reachable, run `concord shards sync` before the \
                 switch time or soon after it: keyed requests of the shards wait until it does",
                next.version
            )));
        }
        println!(
            "map version {}: shards {shards:?} belong to group {to:?} from {} ({switch_ms} ms)",
            next.version,
            moment(switch_ms, now_ms())
        );
        let moved = Self {
            remote: self.remote,
            auth: self.auth,
            map: next,
        };
        let wait = (switch_ms + MARGIN_MS).saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        for &shard in shards {
            moved.hand_over(Shard(shard), switch_ms, to).await?;
        }
        Ok(())
    }

    /// `shard`'s last owner in the map read: its owner now, or the group
    /// it is moving to.
    fn last_owner(&self, shard: u16) -> anyhow::Result<&Owner> {
        self.map
            .history(Shard(shard))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .last()
            .with_context(|| format!("shard {shard} has no owner in the map"))
    }

    /// Calls off the moves of `shards` (`ShardMap::with_cancelled_move`):
    /// the next version, written to every group, the groups the shards
    /// were going to first (so that, were the others not reached, the
    /// shards wait for `concord shards sync` rather than two groups taking
    /// them); then, once both switches passed, the keys handed over both
    /// ways (there are none to hand the second way: the group the shards
    /// were going to took none).
    async fn cancel_moves(&self, shards: &[u16]) -> anyhow::Result<()> {
        // On the clocks of the groups that would take the shards: they
        // must read the cancelled version before their switch.
        let mut next = self.map.clone();
        let mut takers: Vec<String> = Vec::new();
        let mut switches = Vec::new();
        for &shard in shards {
            let last = self.last_owner(shard)?;
            let held = self
                .ask(self.group(&last.group)?, "reading the clock", get_map)
                .await?;
            if last.from_ms > held.now_ms
                && last.from_ms < held.now_ms.saturating_add(MIN_SWITCH_DELAY_MS)
            {
                anyhow::bail!(
                    "shard {shard} switches to group {:?} {}: too close to call off safely \
                     (at least {MIN_SWITCH_DELAY_MS} ms ahead); let it happen, then move it back",
                    last.group,
                    moment(last.from_ms, held.now_ms)
                );
            }
            next = next
                .with_cancelled_move(Shard(shard), held.now_ms)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if !takers.contains(&last.group) {
                takers.push(last.group.clone());
            }
            switches.push((Shard(shard), last.from_ms, last.group.clone()));
        }
        next.version = self.map.version + 1;
        let first: Vec<&str> = takers.iter().map(String::as_str).collect();
        if let Err(error) = self.push(&next, &first).await {
            return Err(error.context(format!(
                "map version {} (the moves of shards {shards:?} called off) did not reach every \
                 group; once they are reachable, run `concord shards sync`: keyed requests of \
                 the shards wait until it does",
                next.version
            )));
        }
        for (shard, at_ms, to) in &switches {
            let back = &next.owners[usize::from(shard.0)];
            let home = back.last().map_or("", |o| o.group.as_str());
            println!(
                "map version {}: the move of shard {} to group {to:?} at {} is called off; \
                 the shard stays with group {home:?} (back 1 ms after that switch)",
                next.version,
                shard.0,
                moment(*at_ms, now_ms())
            );
        }
        let cancelled = Self {
            remote: self.remote,
            auth: self.auth,
            map: next,
        };
        let last_switch = switches.iter().map(|(_, at, _)| *at + 1).max().unwrap_or(0);
        let wait = (last_switch + MARGIN_MS).saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        cancelled.finish_handovers().await
    }

    /// Hands over the keys of every switch into a group that has not got
    /// them all yet (as its nodes report).
    async fn finish_handovers(&self) -> anyhow::Result<()> {
        for group in &self.map.groups {
            let held = self.ask(group, "reading the map", get_map).await?;
            for switch in held.pending {
                let shard = u16::try_from(switch.shard)
                    .ok()
                    .filter(|s| *s < self.map.shards)
                    .with_context(|| {
                        format!("group {:?} names shard {}", group.name, switch.shard)
                    })?;
                self.hand_over(Shard(shard), switch.from_ms, &group.name)
                    .await?;
            }
        }
        Ok(())
    }

    /// §11 step 3 for one switch: pages of keys from the group that gave
    /// the shard up to the group that took it, the last page marked.
    async fn hand_over(&self, shard: Shard, from_ms: u64, to: &str) -> anyhow::Result<()> {
        let history = &self.map.owners[usize::from(shard.0)];
        let from = history
            .iter()
            .rev()
            .find(|o| o.from_ms < from_ms)
            .map(|o: &Owner| o.group.clone())
            .with_context(|| format!("shard {} has no owner before {from_ms} ms", shard.0))?;
        let (giver, taker) = (self.group(&from)?, self.group(to)?);
        let mut after = String::new();
        let mut handed = 0usize;
        loop {
            let cursor = after.clone();
            let page = self
                .ask(giver, "reading the shard's keys", |mut client, auth| {
                    let request = auth.request(pb::ExportShardKeysRequest {
                        shard: u32::from(shard.0),
                        from_ms,
                        after: cursor.clone(),
                        limit: 1_000,
                    });
                    async move { client.export_shard_keys(request).await }
                })
                .await?
                .into_inner();
            let last = page.next_after.is_empty();
            handed += page.keys.len();
            let keys = page.keys;
            self.ask(taker, "handing the keys over", |mut client, auth| {
                let request = auth.request(pb::AdoptShardKeysRequest {
                    shard: u32::from(shard.0),
                    from_ms,
                    keys: keys.clone(),
                    last,
                });
                async move { client.adopt_shard_keys(request).await }
            })
            .await?;
            if last {
                println!(
                    "shard {}: {handed} idempotency key{} handed over from group {from:?} to \
                     group {to:?}",
                    shard.0,
                    if handed == 1 { "" } else { "s" }
                );
                return Ok(());
            }
            after = page.next_after;
        }
    }
}

async fn get_map(
    mut client: Client,
    _auth: &Auth,
) -> Result<pb::GetShardMapResponse, tonic::Status> {
    client
        .get_shard_map(pb::GetShardMapRequest {})
        .await
        .map(tonic::Response::into_inner)
}

fn from_wire(map: Option<pb::ShardMap>) -> anyhow::Result<ShardMap> {
    crate::api::validate::shard_map(map).map_err(explain)
}

fn to_wire(map: &ShardMap) -> pb::ShardMap {
    crate::api::convert::shard_map(map)
}

/// The map as an operator reads it: each group, and each shard's owners
/// (shards with the same history on one line).
fn show_text(held: &pb::GetShardMapResponse) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let map = from_wire(held.map.clone())?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "map version {}, {} shards, founded {} by group {:?}; this node: group {:?}",
        map.version,
        map.shards,
        moment(map.founded_ms, held.now_ms),
        map.founding_group,
        held.group
    );
    for group in &map.groups {
        let now = map.shards_of(&group.name, held.now_ms).len();
        let _ = writeln!(
            out,
            "group {:?}: {now} shard{} now; nodes {}",
            group.name,
            if now == 1 { "" } else { "s" },
            group.nodes.join(", ")
        );
    }
    let mut start = 0usize;
    while start < map.owners.len() {
        let history = &map.owners[start];
        let mut end = start + 1;
        while end < map.owners.len() && map.owners[end] == *history {
            end += 1;
        }
        let owners: Vec<String> = history
            .iter()
            .map(|o| {
                if o.from_ms == map.founded_ms {
                    format!("{} from the founding", o.group)
                } else {
                    format!("{} from {}", o.group, moment(o.from_ms, held.now_ms))
                }
            })
            .collect();
        let range = if end - start == 1 {
            format!("shard {start}")
        } else {
            format!("shards {start}-{}", end - 1)
        };
        let _ = writeln!(out, "{range}: {}", owners.join(", then "));
        start = end;
    }
    for switch in &held.pending {
        let _ = writeln!(
            out,
            "shard {}: keys not handed over yet for the switch at {} (concord shards sync)",
            switch.shard,
            moment(switch.from_ms, held.now_ms)
        );
    }
    Ok(out)
}
