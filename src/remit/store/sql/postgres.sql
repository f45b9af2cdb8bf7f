-- Named statements for the PostgreSQL store. Every name here is also defined in sqlite.sql.
-- Lists arrive as arrays; rows are locked in key order so two batches cannot deadlock.

-- name: tenant_versions
SELECT tenant_id, config_version FROM tenants WHERE tenant_id = ANY(%s);

-- name: load_tenant
SELECT tenant_id, timezone, config_version, config FROM tenants WHERE tenant_id = %s;

-- name: insert_tenant
INSERT INTO tenants (tenant_id, name, timezone, config_version, config, created_at_us)
VALUES (%s, %s, %s, 0, '{}', %s) ON CONFLICT (tenant_id) DO NOTHING;

-- name: update_tenant_config
UPDATE tenants SET timezone = %s, config = %s, config_version = config_version + 1
WHERE tenant_id = %s RETURNING config_version;

-- name: list_tenants
SELECT tenant_id FROM tenants ORDER BY tenant_id;

-- name: lock_counters
-- Keys arrive as parallel arrays; the join walks the primary key.
SELECT c.budget_id, c.instance, c.window_start, c.used, c.held, c.overrun
FROM counters AS c
JOIN unnest(%(budgets)s::text[], %(instances)s::text[]) AS k(budget_id, instance)
  ON c.budget_id = k.budget_id AND c.instance = k.instance
WHERE c.tenant_id = %(tenant)s
ORDER BY c.budget_id, c.instance FOR UPDATE OF c;

-- name: ensure_counter
INSERT INTO counters (tenant_id, budget_id, instance, window_start, used, held, overrun)
VALUES (%s, %s, %s, 0, 0, 0, 0) ON CONFLICT DO NOTHING;

-- name: update_counter
UPDATE counters SET window_start = %s, used = %s, held = %s, overrun = %s
WHERE tenant_id = %s AND budget_id = %s AND instance = %s;

-- name: all_counters
SELECT budget_id, instance, window_start, used, held, overrun FROM counters
WHERE tenant_id = %s ORDER BY budget_id, instance;

-- name: load_buckets
SELECT b.budget_id, b.instance, b.bucket_start, b.used, b.overrun
FROM rolling_buckets AS b
JOIN unnest(%(budgets)s::text[], %(instances)s::text[]) AS k(budget_id, instance)
  ON b.budget_id = k.budget_id AND b.instance = k.instance
WHERE b.tenant_id = %(tenant)s;

-- name: upsert_bucket
INSERT INTO rolling_buckets (tenant_id, budget_id, instance, bucket_start, used, overrun)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (tenant_id, budget_id, instance, bucket_start) DO UPDATE SET used = excluded.used, overrun = excluded.overrun;

-- name: prune_buckets
DELETE FROM rolling_buckets WHERE tenant_id = %s AND budget_id = %s AND instance = %s AND bucket_start < %s;

-- name: all_buckets
SELECT budget_id, instance, bucket_start, used, overrun FROM rolling_buckets WHERE tenant_id = %s;

-- name: load_counted
SELECT e.budget_id, e.instance, e.entity
FROM counted_entities AS e
JOIN unnest(%(budgets)s::text[], %(instances)s::text[], %(windows)s::bigint[], %(entities)s::text[])
     AS k(budget_id, instance, window_start, entity)
  ON e.budget_id = k.budget_id AND e.instance = k.instance AND e.window_start = k.window_start
 AND e.entity = k.entity
WHERE e.tenant_id = %(tenant)s;

-- name: insert_counted
INSERT INTO counted_entities (tenant_id, budget_id, instance, window_start, entity)
VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING;

-- name: prune_counted
DELETE FROM counted_entities WHERE tenant_id = %s AND budget_id = %s AND instance = %s AND window_start < %s;

-- name: all_counted
SELECT budget_id, instance, window_start, entity FROM counted_entities WHERE tenant_id = %s;

-- name: lock_reservations
SELECT reservation_id, status, agent, action, task, amounts, parts, lease_expires_at_us, created_at_us,
       resolved_at_us, result, resolve_key, was_expired
FROM reservations WHERE tenant_id = %s AND reservation_id = ANY(%s)
ORDER BY reservation_id FOR UPDATE;

-- name: due_reservations
SELECT tenant_id, reservation_id FROM reservations
WHERE status = 'held' AND lease_expires_at_us <= %s ORDER BY lease_expires_at_us LIMIT %s;

-- name: held_reservations
SELECT reservation_id, parts FROM reservations WHERE tenant_id = %s AND status = 'held';

-- name: insert_reservation
INSERT INTO reservations (tenant_id, reservation_id, status, agent, action, task, amounts, parts,
                          lease_expires_at_us, created_at_us, resolved_at_us, result, resolve_key, was_expired)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s);

-- name: update_reservation
UPDATE reservations SET status = %s, lease_expires_at_us = %s, resolved_at_us = %s, result = %s, resolve_key = %s,
                        was_expired = %s
WHERE tenant_id = %s AND reservation_id = %s;

-- name: claim_new_idempotency
-- A second transaction claiming the same key waits here for the first to finish, then sees it.
INSERT INTO idempotency (tenant_id, idempotency_key, fingerprint, response, created_at_us)
SELECT %s, k, '', NULL, %s FROM unnest(%s::text[]) AS k ORDER BY k
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING idempotency_key;

-- name: claim_idempotency
SELECT idempotency_key, fingerprint, response FROM idempotency
WHERE tenant_id = %s AND idempotency_key = ANY(%s) ;

-- name: insert_idempotency
INSERT INTO idempotency (tenant_id, idempotency_key, fingerprint, response, created_at_us)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET fingerprint = excluded.fingerprint, response = excluded.response;

-- name: insert_entry
INSERT INTO ledger (tenant_id, at_us, kind, reservation_id, agent, action, postings, detail)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s);

-- name: ledger_page
SELECT entry_id, at_us, kind, reservation_id, agent, action, postings, detail FROM ledger
WHERE tenant_id = %s AND entry_id > %s ORDER BY entry_id LIMIT %s;
