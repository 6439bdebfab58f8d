package sqlite

// migrations are the schema, one version per entry, applied in order; an
// entry is never changed once landed. The same versions exist for
// PostgreSQL (internal/ac/store/postgres/migrations.go).
var migrations = []string{
	// 1: the first schema.
	`CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
	CREATE TABLE nodes (
		id TEXT PRIMARY KEY,
		state TEXT NOT NULL,
		key BLOB,
		hostname TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL,
		first_addr TEXT NOT NULL DEFAULT '',
		last_unlock INTEGER NOT NULL DEFAULT 0,
		last_seen INTEGER NOT NULL DEFAULT 0,
		last_addr TEXT NOT NULL DEFAULT '',
		boot_id TEXT NOT NULL DEFAULT '',
		status TEXT NOT NULL DEFAULT '',
		events_acked INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE macs (mac TEXT PRIMARY KEY, node_id TEXT NOT NULL REFERENCES nodes(id));
	CREATE INDEX macs_node ON macs(node_id);
	CREATE TABLE ssh_keys (key TEXT PRIMARY KEY, added_at INTEGER NOT NULL);
	CREATE TABLE config_files (path TEXT PRIMARY KEY, content BLOB NOT NULL, updated_at INTEGER NOT NULL);
	CREATE TABLE jobs (
		id TEXT PRIMARY KEY,
		node_id TEXT NOT NULL REFERENCES nodes(id),
		kind TEXT NOT NULL,
		args TEXT NOT NULL DEFAULT '',
		timeout_ns INTEGER NOT NULL,
		state TEXT NOT NULL,
		result TEXT NOT NULL DEFAULT '',
		result_by TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		started_at INTEGER NOT NULL DEFAULT 0,
		finished_at INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX jobs_node_state ON jobs(node_id, state, created_at);
	CREATE TABLE events (
		node_id TEXT NOT NULL REFERENCES nodes(id),
		seq INTEGER NOT NULL,
		time INTEGER NOT NULL,
		kind TEXT NOT NULL,
		data TEXT NOT NULL DEFAULT '',
		received_at INTEGER NOT NULL,
		PRIMARY KEY (node_id, seq)
	);`,
	// 2: long-polls ask which nodes have queued jobs.
	`CREATE INDEX jobs_state ON jobs(state, node_id);`,
	// 3: change counters, bumped by triggers whatever process writes, so
	// the server can cache node states and wake long-polls without asking
	// the tables on every commit (heartbeats commit all the time).
	`CREATE TABLE changes (what TEXT PRIMARY KEY, n INTEGER NOT NULL);
	INSERT INTO changes(what, n) VALUES ('nodes', 0), ('jobs', 0);
	CREATE TRIGGER nodes_state_changed AFTER UPDATE OF state ON nodes
		BEGIN UPDATE changes SET n = n + 1 WHERE what = 'nodes'; END;
	CREATE TRIGGER nodes_deleted AFTER DELETE ON nodes
		BEGIN UPDATE changes SET n = n + 1 WHERE what = 'nodes'; END;
	CREATE TRIGGER jobs_queued AFTER INSERT ON jobs WHEN NEW.state = 'queued'
		BEGIN UPDATE changes SET n = n + 1 WHERE what = 'jobs'; END;
	CREATE TRIGGER jobs_requeued AFTER UPDATE OF state ON jobs WHEN NEW.state = 'queued'
		BEGIN UPDATE changes SET n = n + 1 WHERE what = 'jobs'; END;`,
	// 4: recovery master keys, wrapped under a key-encryption key that is
	// a file, never in the database; which key each node last recovered
	// through, so rotation knows when an old key is no longer needed.
	`CREATE TABLE recovery_keys (kid TEXT PRIMARY KEY, wrapped BLOB NOT NULL, created_at INTEGER NOT NULL);
	ALTER TABLE nodes ADD COLUMN recovery_kid TEXT NOT NULL DEFAULT '';`,
	// 5: the trust model (docs/api.md): each node's identity key and its
	// fingerprint (one node per key), the serials of the node certificates
	// it may use (cert_serial '' marks a node enrolled before this
	// migration, which any node-CA certificate of it serves until its first
	// new one; 'none' matches no certificate), and the MACs it reported
	// that no operator has bound. A change of serial drops the server's
	// node cache like a change of state.
	`ALTER TABLE nodes ADD COLUMN identity BLOB;
	ALTER TABLE nodes ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
	ALTER TABLE nodes ADD COLUMN cert_serial TEXT NOT NULL DEFAULT '';
	ALTER TABLE nodes ADD COLUMN cert_pending TEXT NOT NULL DEFAULT '';
	ALTER TABLE nodes ADD COLUMN cert_expiry INTEGER NOT NULL DEFAULT 0;
	CREATE UNIQUE INDEX nodes_fingerprint ON nodes(fingerprint) WHERE fingerprint <> '';
	CREATE TABLE reported_macs (
		node_id TEXT NOT NULL REFERENCES nodes(id),
		mac TEXT NOT NULL,
		first_seen INTEGER NOT NULL,
		last_seen INTEGER NOT NULL,
		last_addr TEXT NOT NULL DEFAULT '',
		PRIMARY KEY (node_id, mac)
	);
	CREATE TRIGGER nodes_cert_changed AFTER UPDATE OF cert_serial, cert_pending ON nodes
		BEGIN UPDATE changes SET n = n + 1 WHERE what = 'nodes'; END;`,
	// 6: the grid's rollout state per app (internal/grid.RolloutState as
	// JSON), versioned for compare-and-swap.
	`CREATE TABLE grid_rollouts (app TEXT PRIMARY KEY, state TEXT NOT NULL, version INTEGER NOT NULL);`,
	// 7: which nodes changed: each node's last state or certificate change
	// (or its deletion) as the value the nodes counter took then, so a
	// server drops from its cache and wakes the polls of those nodes
	// only. Dropping the whole cache and waking every poll on any change
	// made a fleet coming up (a certificate promotion per node) cost
	// N times N certificate checks and store reads.
	`CREATE TABLE node_changes (id TEXT PRIMARY KEY, n INTEGER NOT NULL);
	CREATE INDEX node_changes_n ON node_changes(n);
	DROP TRIGGER nodes_state_changed;
	DROP TRIGGER nodes_deleted;
	DROP TRIGGER nodes_cert_changed;
	CREATE TRIGGER nodes_state_changed AFTER UPDATE OF state ON nodes BEGIN
		UPDATE changes SET n = n + 1 WHERE what = 'nodes';
		INSERT INTO node_changes(id, n) VALUES (NEW.id, (SELECT n FROM changes WHERE what = 'nodes'))
			ON CONFLICT(id) DO UPDATE SET n = excluded.n;
	END;
	CREATE TRIGGER nodes_deleted AFTER DELETE ON nodes BEGIN
		UPDATE changes SET n = n + 1 WHERE what = 'nodes';
		INSERT INTO node_changes(id, n) VALUES (OLD.id, (SELECT n FROM changes WHERE what = 'nodes'))
			ON CONFLICT(id) DO UPDATE SET n = excluded.n;
	END;
	CREATE TRIGGER nodes_cert_changed AFTER UPDATE OF cert_serial, cert_pending ON nodes BEGIN
		UPDATE changes SET n = n + 1 WHERE what = 'nodes';
		INSERT INTO node_changes(id, n) VALUES (NEW.id, (SELECT n FROM changes WHERE what = 'nodes'))
			ON CONFLICT(id) DO UPDATE SET n = excluded.n;
	END;`,
	// 8: floods (issue 16): when a node was first approved (a pending
	// node that never was expires: g8-ac serve --pending-expiry), how many
	// events each node holds (its quota is checked without counting rows),
	// and an index for counting and expiring pending nodes.
	`ALTER TABLE nodes ADD COLUMN approved_at INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE nodes ADD COLUMN events_stored INTEGER NOT NULL DEFAULT 0;
	UPDATE nodes SET approved_at = updated_at
		WHERE state IN ('approved', 'revoked') OR last_seen <> 0 OR key IS NOT NULL OR cert_serial <> 'none';
	UPDATE nodes SET events_stored = (SELECT count(*) FROM events WHERE events.node_id = nodes.id);
	CREATE INDEX nodes_state ON nodes(state, created_at);`,
}
