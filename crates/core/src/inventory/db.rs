//! The inventory as one SQLite file: its schema, and reading and writing it whole.
//!
//! The file is written fresh for every publish, in one transaction, rows in a fixed order,
//! so the same inventory gives the same bytes (and so the same digest: a repeated publish
//! finds the manifest already there). `PRAGMA user_version` holds [`SCHEMA_VERSION`];
//! a newer file is refused rather than misread.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags};

use super::{Group, GroupEntry, Inventory, InventoryError, PluginRow};

/// The schema this plugsync writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE plugins (
    name TEXT NOT NULL,              -- author/name, as Dify installs it
    version TEXT NOT NULL,
    description TEXT NOT NULL,       -- the manifest's description (en_US)
    checksum TEXT NOT NULL,          -- Dify's checksum
    unique_identifier TEXT NOT NULL, -- author/name:version@checksum
    digest TEXT NOT NULL,            -- sha256:<hex> of the .difypkg
    size INTEGER NOT NULL,           -- bytes of the .difypkg
    repository TEXT NOT NULL,        -- host/path of the package artifact
    manifest_digest TEXT NOT NULL,   -- the package artifact's manifest
    signature TEXT NOT NULL,         -- signer key name, unsigned or invalid
    PRIMARY KEY (name, version)
);
CREATE TABLE plugin_groups (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE plugin_group_entries (
    group_name TEXT NOT NULL,
    group_version TEXT NOT NULL,
    plugin TEXT NOT NULL,
    plugin_version TEXT NOT NULL,
    mandatory INTEGER NOT NULL,
    PRIMARY KEY (group_name, group_version, plugin),
    FOREIGN KEY (group_name, group_version) REFERENCES plugin_groups (name, version),
    FOREIGN KEY (plugin, plugin_version) REFERENCES plugins (name, version)
);
";

fn db_error(path: &Path, e: rusqlite::Error) -> InventoryError {
    InventoryError::Database {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes `inventory` as a new SQLite file at `path` (which must not exist).
pub(crate) fn write(path: &Path, inventory: &Inventory) -> Result<(), InventoryError> {
    let err = |e| db_error(path, e);
    let mut conn = Connection::open(path).map_err(err)?;
    conn.execute_batch("PRAGMA journal_mode = OFF; PRAGMA foreign_keys = ON;")
        .map_err(err)?;
    let tx = conn.transaction().map_err(err)?;
    tx.execute_batch(SCHEMA).map_err(err)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(err)?;
    let mut plugins: Vec<&PluginRow> = inventory.plugins.iter().collect();
    plugins.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    for p in plugins {
        tx.execute(
            "INSERT INTO plugins VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                p.name,
                p.version,
                p.description,
                p.checksum,
                p.unique_identifier,
                p.digest,
                p.size as i64,
                p.repository,
                p.manifest_digest,
                p.signature
            ],
        )
        .map_err(err)?;
    }
    let mut groups: Vec<&Group> = inventory.groups.iter().collect();
    groups.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    for g in groups {
        tx.execute(
            "INSERT INTO plugin_groups VALUES (?1, ?2, ?3)",
            params![g.name, g.version, g.description],
        )
        .map_err(err)?;
        let mut entries: Vec<&GroupEntry> = g.entries.iter().collect();
        entries.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        for e in entries {
            tx.execute(
                "INSERT INTO plugin_group_entries VALUES (?1, ?2, ?3, ?4, ?5)",
                params![g.name, g.version, e.plugin, e.version, e.mandatory],
            )
            .map_err(err)?;
        }
    }
    tx.commit().map_err(err)?;
    conn.close().map_err(|(_, e)| err(e))?;
    Ok(())
}

/// Reads the whole inventory from the SQLite file at `path` (read-only).
pub(crate) fn read(path: &Path) -> Result<Inventory, InventoryError> {
    let err = |e| db_error(path, e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(err)?;
    if version != SCHEMA_VERSION {
        return Err(InventoryError::Database {
            path: path.display().to_string(),
            reason: format!(
                "inventory schema version {version}; this plugsync reads version {SCHEMA_VERSION} (upgrade plugsync, or republish the inventory)"
            ),
        });
    }
    let mut stmt = conn
        .prepare(
            "SELECT name, version, description, checksum, unique_identifier, digest, size, \
             repository, manifest_digest, signature FROM plugins ORDER BY name, version",
        )
        .map_err(err)?;
    let plugins = stmt
        .query_map([], |row| {
            Ok(PluginRow {
                name: row.get(0)?,
                version: row.get(1)?,
                description: row.get(2)?,
                checksum: row.get(3)?,
                unique_identifier: row.get(4)?,
                digest: row.get(5)?,
                size: row.get::<_, i64>(6)? as u64,
                repository: row.get(7)?,
                manifest_digest: row.get(8)?,
                signature: row.get(9)?,
            })
        })
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let mut stmt = conn
        .prepare("SELECT name, version, description FROM plugin_groups ORDER BY name, version")
        .map_err(err)?;
    let mut groups = stmt
        .query_map([], |row| {
            Ok(Group {
                name: row.get(0)?,
                version: row.get(1)?,
                description: row.get(2)?,
                entries: Vec::new(),
            })
        })
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let mut stmt = conn
        .prepare(
            "SELECT plugin, plugin_version, mandatory FROM plugin_group_entries \
             WHERE group_name = ?1 AND group_version = ?2 ORDER BY plugin",
        )
        .map_err(err)?;
    for g in &mut groups {
        g.entries = stmt
            .query_map(params![g.name, g.version], |row| {
                Ok(GroupEntry {
                    plugin: row.get(0)?,
                    version: row.get(1)?,
                    mandatory: row.get(2)?,
                })
            })
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
    }
    Ok(Inventory { plugins, groups })
}

/// The SQLite bytes of `inventory` (written through a temporary file).
pub(crate) fn to_bytes(inventory: &Inventory) -> Result<Vec<u8>, InventoryError> {
    let dir = tempfile::tempdir().map_err(|e| InventoryError::Io {
        what: "a temporary directory for the inventory database".into(),
        reason: e.to_string(),
    })?;
    let path = dir.path().join("inventory.db");
    write(&path, inventory)?;
    std::fs::read(&path).map_err(|e| InventoryError::Io {
        what: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Inventory {
        Inventory {
            plugins: vec![PluginRow {
                name: "acme/tool".into(),
                version: "1.0.0".into(),
                description: "A tool".into(),
                checksum: "c".into(),
                unique_identifier: "acme/tool:1.0.0@c".into(),
                digest: "sha256:d".into(),
                size: 3,
                repository: "r/acme/tool".into(),
                manifest_digest: "sha256:m".into(),
                signature: "unsigned".into(),
            }],
            groups: vec![Group {
                name: "base".into(),
                version: "1".into(),
                description: String::new(),
                entries: vec![GroupEntry {
                    plugin: "acme/tool".into(),
                    version: "1.0.0".into(),
                    mandatory: false,
                }],
            }],
        }
    }

    #[test]
    fn round_trips_and_is_byte_stable() {
        let inventory = sample();
        let a = to_bytes(&inventory).unwrap();
        let b = to_bytes(&inventory).unwrap();
        assert_eq!(a, b, "the same inventory must give the same bytes");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        std::fs::write(&path, &a).unwrap();
        assert_eq!(read(&path).unwrap(), inventory);
    }

    #[test]
    fn a_group_naming_an_unknown_plugin_is_refused_by_the_schema() {
        let mut inventory = sample();
        inventory.groups[0].entries[0].plugin = "acme/other".into();
        assert!(matches!(
            to_bytes(&inventory),
            Err(InventoryError::Database { .. })
        ));
    }
}
