//! A whole set rendered, its plugins shared out over the cores.

use super::plugin::render_plugin_sharing;
use super::values::RuntimeValues;
use super::{
    AsValue, ObjectForm, PluginInput, RenderError, RenderSettings, RenderedPlugin, Templates,
};
use crate::model::PluginSet;

/// Renders every plugin of a set. Plugins are independent, so errors name the plugin.
///
/// Sets of more than a few dozen plugins are split over the available cores; the output,
/// and the error when some plugin fails (the first one's), are the same as rendering the
/// plugins one by one.
pub fn render_set(
    set: &PluginSet,
    plugins: &[PluginInput<'_>],
    templates: &Templates,
    settings: &RenderSettings,
) -> Result<Vec<RenderedPlugin>, RenderError> {
    render_set_map(set, plugins, templates, settings, |_, rendered| rendered)
}

/// [`render_set`], handing each rendered plugin (with its index in `plugins`) to `map` on
/// the thread that rendered it, so what the caller keeps of it is extracted, and the rest
/// freed, in parallel too. Results are in the order of `plugins`.
pub(crate) fn render_set_map<T: Send>(
    set: &PluginSet,
    plugins: &[PluginInput<'_>],
    templates: &Templates,
    settings: &RenderSettings,
    map: impl Fn(usize, RenderedPlugin) -> T + Sync,
) -> Result<Vec<T>, RenderError> {
    render_set_map_as::<AsValue, T>(set, plugins, templates, settings, map)
}

/// [`render_set_map`], with the objects in form `F`.
pub(crate) fn render_set_map_as<F: ObjectForm, T: Send>(
    set: &PluginSet,
    plugins: &[PluginInput<'_>],
    templates: &Templates,
    settings: &RenderSettings,
    map: impl Fn(usize, RenderedPlugin<F::Object>) -> T + Sync,
) -> Result<Vec<T>, RenderError> {
    let env = templates.environment()?;
    let (env, map) = (&env, &map);
    // Plugins are independent and rendering is pure, so large sets are split over the
    // cores (rayon's pool, which steals work, so a thread that gets less of the CPU, or
    // harder plugins, does not leave the others idle at the end). Once a plugin fails,
    // later batches are skipped; every batch before it is rendered, and results are in
    // order, so the error returned is the first plugin's, as a sequential render's.
    use rayon::prelude::*;
    let failed = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let results: Vec<Result<Vec<T>, RenderError>> = plugins
        .par_chunks(RENDER_BATCH)
        .with_min_len(MIN_PLUGINS_PER_THREAD / RENDER_BATCH)
        .enumerate()
        .map(|(batch, inputs)| {
            if batch > failed.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(Vec::new());
            }
            let start = batch * RENDER_BATCH;
            let mut shared = RuntimeValues::default();
            let part: Result<Vec<T>, RenderError> = inputs
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    render_plugin_sharing::<F>(set, p, env, settings, &mut shared)
                        .map(|r| map(start + i, r))
                })
                .collect();
            if part.is_err() {
                failed.fetch_min(batch, std::sync::atomic::Ordering::Relaxed);
            }
            part
        })
        .collect();
    let mut rendered = Vec::with_capacity(plugins.len());
    for part in results {
        rendered.extend(part?);
    }
    Ok(rendered)
}

/// Plugins a rendering thread takes at a time: small enough to even out the threads' ends,
/// large enough that taking one costs nothing next to rendering it.
const RENDER_BATCH: usize = 8;

/// Fewest plugins worth handing to another thread (below, it costs more than it saves).
const MIN_PLUGINS_PER_THREAD: usize = 16;
