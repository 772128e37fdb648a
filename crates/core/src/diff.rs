//! The pull-request diff: two revisions of a repository, planned against each other and
//! handed to [`report`](crate::report) to present. Above both `pipeline` (which makes each
//! revision's desired state) and `report` (which presents a plan and the plugins of each
//! side), so neither imports the other.

use std::collections::HashSet;

use crate::error::Error;
use crate::pipeline::{plugin_inputs, resolved_state, DesiredState, ResolvedState};
use crate::plan::{self, Action, Change, Compare, ObjectKey, Plan, PlanError, Side};
use crate::render::{self, PluginInput, RenderSettings, RenderedPlugin};
use crate::report::{DiffReport, PluginIdentity};
use crate::resolve::Resolver;
use crate::source::Snapshot;

/// The pull-request diff of `head` against `base`: the same report as [`diff_states`] on
/// the two revisions' desired states ([`crate::pipeline::desired_state`]), tested to be
/// byte-identical in every format, at a fraction of the time and memory.
///
/// Rendering is a pure function of each plugin's inputs, so a plugin whose inputs have the
/// same fingerprint at both revisions ([`render::plugin_fingerprint`]: its lock entry,
/// runtime, manifest, the set's settings, templates and recorded images) renders to the
/// same objects at both: it is rendered once, at head, for its object keys only, and its
/// objects are counted as unchanged without being compared or kept. Only the plugins
/// whose inputs differ are rendered at base and planned, so neither revision's objects
/// are ever all in memory.
pub async fn diff_report(
    base: &dyn Snapshot,
    head: &dyn Snapshot,
    file: &str,
    resolver: &Resolver,
    settings: &RenderSettings,
    base_label: &str,
    context_lines: usize,
) -> Result<DiffReport, Error> {
    let head_state = resolved_state(head, file, resolver)
        .await?
        .ok_or_else(|| Error::Usage(format!("{file}: not found in {}", head.describe())))?;
    // Packages committed in the repository that the pull request left alone (the same git
    // blob or tree at base) are not read or packed again: the resolver hands base the
    // package head read, as long as head's state holds it.
    let base_state = resolved_state(base, file, resolver).await?;
    let fingerprints = |state: &ResolvedState| -> Vec<[u8; 32]> {
        let set = render::set_fingerprint(
            state.set.spec(),
            &state.templates,
            settings,
            Some(&state.built_images),
        );
        plugin_inputs(&state.resolution, &state.built_images)
            .iter()
            .map(|input| render::plugin_fingerprint(&set, input))
            .collect()
    };
    let head_prints = fingerprints(&head_state);
    let base_prints = base_state.as_ref().map(fingerprints).unwrap_or_default();
    let at_base: HashSet<&[u8; 32]> = base_prints.iter().collect();
    let at_head: HashSet<&[u8; 32]> = head_prints.iter().collect();

    let plan_error = |e: PlanError| Error::Usage(e.to_string());
    let duplicate = |side: Side, key: &ObjectKey| {
        plan_error(PlanError::DuplicateObject {
            side,
            key: key.clone(),
        })
    };
    // Head: of the plugins the same at base, only the keys, each object read only as far
    // as its identity; the plugins that differ from base are rendered again, read whole,
    // for the plan.
    let head_inputs = plugin_inputs(&head_state.resolution, &head_state.built_images);
    let mut rendered = render::render_set_map_as::<render::AsIdentity, _>(
        head_state.set.spec(),
        &head_inputs,
        &head_state.templates,
        settings,
        |i, plugin| {
            let keys: Result<Vec<ObjectKey>, PlanError> = if at_base.contains(&head_prints[i]) {
                plugin.objects.iter().map(ObjectKey::of).collect()
            } else {
                Ok(Vec::new())
            };
            (keys, Vec::new())
        },
    )?;
    let changed: Vec<PluginInput<'_>> = head_inputs
        .into_iter()
        .zip(&head_prints)
        .filter(|(_, print)| !at_base.contains(print))
        .map(|(input, _)| input)
        .collect();
    let changed = render::render_set(
        head_state.set.spec(),
        &changed,
        &head_state.templates,
        settings,
    )?;
    rendered.extend(
        changed
            .into_iter()
            .map(|plugin| (Ok(Vec::new()), plugin.objects)),
    );
    let mut desired = Vec::new();
    let mut shared_keys = Vec::new();
    let mut head_keys = HashSet::new();
    // The templates ConfigMaps (named by the hash of their content) are planned as any
    // object: a change of templates shows as one created and the other deleted.
    let head_templates = head_state
        .templates
        .config_map(head_state.set.spec())
        .map(|object| vec![(Ok(Vec::new()), vec![object])])
        .unwrap_or_default();
    for (keys, objects) in head_templates.into_iter().chain(rendered) {
        for key in keys.map_err(plan_error)? {
            if !head_keys.insert(key.clone()) {
                return Err(duplicate(Side::Desired, &key));
            }
            shared_keys.push(key);
        }
        for object in objects {
            let key = ObjectKey::of(&object).map_err(plan_error)?;
            if !head_keys.insert(key.clone()) {
                return Err(duplicate(Side::Desired, &key));
            }
            desired.push(object);
        }
    }
    // Base: only the plugins whose inputs differ from every head plugin's.
    let mut live = Vec::new();
    if let Some(state) = &base_state {
        let inputs: Vec<PluginInput<'_>> = plugin_inputs(&state.resolution, &state.built_images)
            .into_iter()
            .zip(&base_prints)
            .filter(|(_, print)| !at_head.contains(print))
            .map(|(input, _)| input)
            .collect();
        let mut base_keys: HashSet<ObjectKey> = shared_keys.iter().cloned().collect();
        let base_templates = state.templates.config_map(state.set.spec());
        let rendered = render::render_set(state.set.spec(), &inputs, &state.templates, settings)?;
        let objects = base_templates
            .into_iter()
            .chain(rendered.into_iter().flat_map(|plugin| plugin.objects));
        for object in objects {
            let key = ObjectKey::of(&object).map_err(plan_error)?;
            if !base_keys.insert(key.clone()) {
                return Err(duplicate(Side::Live, &key));
            }
            live.push(object);
        }
    }

    // The plan of what differs, with the shared objects merged in as unchanged, in the
    // order `plan` gives: every desired key in apply order, then the deletes.
    let planned = plan::plan_refs_sparse(&desired, &live, Compare::Exact).map_err(plan_error)?;
    drop((desired, live));
    let (mut changes, deletes): (Vec<Change>, Vec<Change>) = planned
        .changes
        .into_iter()
        .partition(|c| c.action != Action::Delete);
    changes.extend(shared_keys.into_iter().map(|key| Change {
        key,
        action: Action::Unchanged,
        reason: "in sync".to_string(),
        desired: None,
        live: None,
        changed_paths: Vec::new(),
        compare: Compare::Exact,
    }));
    changes.sort_by(|a, b| a.key.cmp(&b.key));
    changes.extend(deletes);

    let identities = |state: &ResolvedState| -> Vec<PluginIdentity> {
        state
            .resolution
            .plugins
            .iter()
            .map(|p| PluginIdentity {
                name: p.locked.name.clone(),
                version: p.locked.version.clone(),
                plugin_id: p.locked.plugin_id.clone(),
            })
            .collect()
    };
    Ok(DiffReport::from_plan(
        base_label,
        base_state
            .as_ref()
            .map(|b| (b.source.as_str(), identities(b))),
        (head_state.source.as_str(), identities(&head_state)),
        head_state.lock.clone(),
        Plan { changes },
        context_lines,
    ))
}

/// The pull-request diff of two revisions' [`DesiredState`]s, every object of both planned:
/// `head` compared with `base` (`None`: a base without plugins.yaml, so all is new). The
/// reference [`diff_report`] is held to (tests/synth.rs, the benchmark): simple, and as slow
/// and large as holding both revisions whole.
pub fn diff_states(
    base_label: &str,
    base: Option<&DesiredState>,
    head: &DesiredState,
    context_lines: usize,
) -> Result<DiffReport, PlanError> {
    // Borrowed, not collected with `DesiredState::objects`: copying every object of
    // both sides cost as much time and memory as planning them.
    // The templates ConfigMap is the one object not rendered per plugin.
    let head_templates = head.templates_object();
    let base_templates = base.and_then(DesiredState::templates_object);
    let plan = plan::plan_refs_sparse(
        head_templates
            .iter()
            .chain(head.rendered.iter().flat_map(|p| &p.objects)),
        base_templates.iter().chain(
            base.into_iter()
                .flat_map(|b| b.rendered.iter().flat_map(|p| &p.objects)),
        ),
        Compare::Exact,
    )?;
    let side = |rendered: &'_ [RenderedPlugin]| -> Vec<PluginIdentity> {
        rendered
            .iter()
            .map(|p| PluginIdentity {
                name: p.name.clone(),
                version: p.version.clone(),
                plugin_id: p.plugin_id.clone(),
            })
            .collect()
    };
    Ok(DiffReport::from_plan(
        base_label,
        base.map(|b| (b.source.as_str(), side(&b.rendered))),
        (head.source.as_str(), side(&head.rendered)),
        head.lock.clone(),
        plan,
        context_lines,
    ))
}
