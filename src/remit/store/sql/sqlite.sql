-- Named statements for the SQLite store. Every name here is also defined in postgres.sql
-- (tests/unit/test_sql_names.py checks it). Lists arrive as one JSON array parameter.

-- name: lock_tenants
-- The tenant row is every batch's first lock: it orders all writers of one tenant.
SELECT tenant_id, config_version, write_seq FROM tenants
WHERE tenant_id IN (SELECT value FROM json_each(?)) ORDER BY tenant_id;

-- name: claim_tenants
-- A batch's first statement (the writers' lock is already held) moves each write_seq on.
UPDATE tenants SET write_seq = write_seq + 1 WHERE tenant_id IN (SELECT value FROM json_each(?))
RETURNING tenant_id, config_version, write_seq - 1, next_due_us;

-- name: claim_owned_tenants
-- An owned batch's claim (Engine._execute_owned): moves on each write_seq that is still the one
-- this engine wrote, under the config it decides with; the caller counts the rows.
UPDATE tenants SET write_seq = write_seq + 1
FROM (SELECT value->>0 AS t, value->>1 AS s, value->>2 AS v FROM json_each(?)) AS k
WHERE tenants.tenant_id = k.t AND tenants.write_seq = k.s AND tenants.config_version = k.v
RETURNING tenants.tenant_id;

-- name: set_next_due
UPDATE tenants SET next_due_us = ? WHERE tenant_id = ?;

-- name: load_tenant
SELECT tenant_id, timezone, config_version, config, lineage FROM tenants WHERE tenant_id = ?;

-- name: insert_tenant
INSERT INTO tenants (tenant_id, name, timezone, config_version, config, created_at_us)
VALUES (?, ?, ?, 0, '{}', ?) ON CONFLICT (tenant_id) DO NOTHING;

-- name: update_tenant_config
UPDATE tenants SET timezone = ?, config = ?, lineage = ?, config_version = config_version + 1
WHERE tenant_id = ? RETURNING config_version;

-- name: list_tenants
SELECT tenant_id FROM tenants ORDER BY tenant_id;

-- name: lock_counters
-- Keys arrive as one JSON array of [budget_id, instance]; the join walks the primary key.
SELECT c.budget_id, c.instance, c.window_start, c.used, c.held, c.overrun
FROM json_each(?2) AS k CROSS JOIN
    counters AS c ON c.tenant_id = ?1 AND c.budget_id = json_extract(k.value, '$[0]')
                  AND c.instance = json_extract(k.value, '$[1]')
ORDER BY c.budget_id, c.instance;

-- name: ensure_counter
INSERT INTO counters (tenant_id, budget_id, instance, window_start, used, held, overrun)
VALUES (?, ?, ?, 0, 0, 0, 0) ON CONFLICT DO NOTHING;

-- name: update_counter
UPDATE counters SET window_start = ?, used = ?, held = ?, overrun = ?
WHERE tenant_id = ? AND budget_id = ? AND instance = ?;

-- name: all_counters
SELECT budget_id, instance, window_start, used, held, overrun FROM counters
WHERE tenant_id = ? ORDER BY budget_id, instance;

-- name: load_buckets
SELECT b.budget_id, b.instance, b.bucket_start, b.used, b.overrun
FROM json_each(?2) AS k CROSS JOIN
    rolling_buckets AS b ON b.tenant_id = ?1 AND b.budget_id = json_extract(k.value, '$[0]')
                         AND b.instance = json_extract(k.value, '$[1]');

-- name: upsert_bucket
INSERT INTO rolling_buckets (tenant_id, budget_id, instance, bucket_start, used, overrun)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant_id, budget_id, instance, bucket_start) DO UPDATE SET used = excluded.used, overrun = excluded.overrun;

-- name: prune_buckets
DELETE FROM rolling_buckets WHERE tenant_id = ? AND budget_id = ? AND instance = ? AND bucket_start < ?;

-- name: all_buckets
SELECT budget_id, instance, bucket_start, used, overrun FROM rolling_buckets WHERE tenant_id = ?;

-- name: load_counted
SELECT e.budget_id, e.instance, e.entity
FROM json_each(?2) AS k CROSS JOIN
    counted_entities AS e ON e.tenant_id = ?1 AND e.budget_id = json_extract(k.value, '$[0]')
                          AND e.instance = json_extract(k.value, '$[1]')
                          AND e.window_start = json_extract(k.value, '$[2]')
                          AND e.entity = json_extract(k.value, '$[3]');

-- name: insert_counted
INSERT INTO counted_entities (tenant_id, budget_id, instance, window_start, entity)
VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING;

-- name: prune_counted
DELETE FROM counted_entities WHERE tenant_id = ? AND budget_id = ? AND instance = ? AND window_start < ?;

-- name: all_counted
SELECT budget_id, instance, window_start, entity FROM counted_entities WHERE tenant_id = ?;

-- name: lock_reservations
SELECT reservation_id, status, agent, action, task, amounts, parts, lease_expires_at_us, created_at_us,
       resolved_at_us, result, resolve_key, was_expired
FROM reservations WHERE tenant_id = ? AND reservation_id IN (SELECT value FROM json_each(?))
ORDER BY reservation_id;

-- name: due_reservations
SELECT tenant_id, reservation_id FROM reservations
WHERE status = 'held' AND lease_expires_at_us <= ? ORDER BY lease_expires_at_us LIMIT ?;

-- name: first_holds_of_tenant
-- The tenant's live holds by lease deadline, earliest first.
SELECT reservation_id, lease_expires_at_us FROM reservations
WHERE status = 'held' AND tenant_id = ?1 ORDER BY lease_expires_at_us LIMIT ?2;

-- name: held_reservations
SELECT reservation_id, parts FROM reservations WHERE tenant_id = ? AND status = 'held';

-- name: insert_reservation
INSERT INTO reservations (tenant_id, reservation_id, status, agent, action, task, amounts, parts,
                          lease_expires_at_us, created_at_us, resolved_at_us, result, resolve_key, was_expired)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: update_reservation
UPDATE reservations SET status = ?, lease_expires_at_us = ?, resolved_at_us = ?, result = ?, resolve_key = ?,
                        was_expired = ?
WHERE tenant_id = ? AND reservation_id = ?;

-- name: claim_new_idempotency
INSERT INTO idempotency (tenant_id, idempotency_key, fingerprint, response, created_at_us)
SELECT ?, value, '', NULL, ? FROM json_each(?) WHERE true ORDER BY value
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING idempotency_key;

-- name: claim_idempotency
SELECT idempotency_key, fingerprint, response FROM idempotency
WHERE tenant_id = ? AND idempotency_key IN (SELECT value FROM json_each(?));

-- name: withdraw_claim
DELETE FROM idempotency WHERE tenant_id = ? AND idempotency_key = ? AND response IS NULL;

-- name: insert_idempotency
INSERT INTO idempotency (tenant_id, idempotency_key, fingerprint, response, created_at_us)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET fingerprint = excluded.fingerprint, response = excluded.response;

-- name: insert_entry
INSERT INTO ledger (tenant_id, at_us, kind, reservation_id, agent, action, postings, detail)
VALUES (?, ?, ?, ?, ?, ?, ?, ?);

-- name: ledger_page
SELECT entry_id, at_us, kind, reservation_id, agent, action, postings, detail FROM ledger
WHERE tenant_id = ? AND entry_id > ? ORDER BY entry_id LIMIT ?;

-- name: insert_key
INSERT INTO api_keys (tenant_id, key_id, secret_sha256, role, agent, name, created_at_us)
VALUES (?, ?, ?, ?, ?, ?, ?);

-- name: find_key
SELECT tenant_id, key_id, secret_sha256, role, agent, name, created_at_us, rotated_at_us, revoked_at_us
FROM api_keys WHERE key_id = ?;

-- name: list_keys
SELECT tenant_id, key_id, secret_sha256, role, agent, name, created_at_us, rotated_at_us, revoked_at_us
FROM api_keys WHERE tenant_id = ? ORDER BY created_at_us, key_id;

-- name: rotate_key
UPDATE api_keys SET secret_sha256 = ?, rotated_at_us = ?
WHERE tenant_id = ? AND key_id = ? AND revoked_at_us IS NULL RETURNING key_id;

-- name: revoke_key
UPDATE api_keys SET revoked_at_us = ?
WHERE tenant_id = ? AND key_id = ? AND revoked_at_us IS NULL RETURNING key_id;

-- name: count_admin_keys
SELECT count(*) FROM api_keys WHERE tenant_id = ? AND role = 'admin' AND revoked_at_us IS NULL;

-- name: ledger_after
-- The audit explorer, oldest first from a cursor. A NULL filter matches every entry.
SELECT entry_id, at_us, kind, reservation_id, agent, action, postings, detail FROM ledger
WHERE tenant_id = ? AND entry_id > ?
  AND (? IS NULL OR agent = ?) AND (? IS NULL OR agent IN (SELECT value FROM json_each(?)))
  AND (? IS NULL OR action = ?) AND (? IS NULL OR kind = ?)
  AND at_us >= ? AND at_us < ?
ORDER BY entry_id LIMIT ?;

-- name: ledger_before
-- The audit explorer, newest first from a cursor.
SELECT entry_id, at_us, kind, reservation_id, agent, action, postings, detail FROM ledger
WHERE tenant_id = ? AND entry_id < ?
  AND (? IS NULL OR agent = ?) AND (? IS NULL OR agent IN (SELECT value FROM json_each(?)))
  AND (? IS NULL OR action = ?) AND (? IS NULL OR kind = ?)
  AND at_us >= ? AND at_us < ?
ORDER BY entry_id DESC LIMIT ?;

-- name: ledger_recent_postings
-- Burn rates: the postings of the newest entries since a moment, newest first.
SELECT at_us, postings FROM ledger
WHERE tenant_id = ? AND at_us >= ? AND kind IN ('commit', 'late_commit', 'usage')
ORDER BY at_us DESC LIMIT ?;

-- name: count_held
SELECT count(*) FROM reservations WHERE status = 'held';
