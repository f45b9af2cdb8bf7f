-- Named statements for the PostgreSQL store. Every name here is also defined in sqlite.sql.
-- Lists of values arrive as arrays; lists of rows as one JSON array of arrays (`r->>n` is
-- column n), which costs the client a fraction of dumping one array per column. Rows are
-- locked in key order so two batches cannot deadlock. One statement per table per batch.

-- name: lock_tenants
-- The tenant row is every batch's first lock: it orders all writers of one tenant.
SELECT tenant_id, config_version, write_seq FROM tenants
WHERE tenant_id = ANY(%s) ORDER BY tenant_id FOR UPDATE;

-- name: claim_tenants
-- A batch's first statement: locks the tenant rows in id order and moves each write_seq on.
UPDATE tenants AS t SET write_seq = t.write_seq + 1
FROM (SELECT tenant_id FROM tenants WHERE tenant_id = ANY(%s) ORDER BY tenant_id FOR UPDATE) AS k
WHERE t.tenant_id = k.tenant_id
RETURNING t.tenant_id, t.config_version, t.write_seq - 1, t.next_due_us;

-- name: claim_owned_tenants
-- An owned batch's claim (Engine._execute_owned): each write_seq moves on if it is still the one
-- this engine wrote and the config the one it decides with; if any is not, remit_tenant_moved()
-- fails the transaction, so what the pipeline sent behind this statement is never applied.
-- The rows are locked in id order first, by key, as claim_tenants does (the ids come again as
-- an array for that), so that writers of several tenants cannot deadlock.
WITH claimed AS (
    UPDATE tenants AS t SET write_seq = t.write_seq + 1
    FROM (SELECT tenant_id FROM tenants WHERE tenant_id = ANY(%s) ORDER BY tenant_id FOR UPDATE) AS l,
         jsonb_array_elements(%s::jsonb) AS k(r)
    WHERE t.tenant_id = l.tenant_id AND k.r->>0 = l.tenant_id
      AND t.write_seq = (k.r->>1)::bigint AND t.config_version = (k.r->>2)::bigint
    RETURNING t.tenant_id)
SELECT remit_tenant_moved() FROM (SELECT count(*) AS n FROM claimed) AS c WHERE c.n <> %s;

-- name: set_next_due
UPDATE tenants SET next_due_us = %s WHERE tenant_id = %s;

-- name: load_tenant
SELECT tenant_id, timezone, config_version, config, lineage FROM tenants WHERE tenant_id = %s;

-- name: insert_tenant
INSERT INTO tenants (tenant_id, name, timezone, config_version, config, created_at_us)
VALUES (%s, %s, %s, 0, '{}', %s) ON CONFLICT (tenant_id) DO NOTHING;

-- name: update_tenant_config
UPDATE tenants SET timezone = %s, config = %s, lineage = %s, config_version = config_version + 1
WHERE tenant_id = %s RETURNING config_version;

-- name: list_tenants
SELECT tenant_id FROM tenants ORDER BY tenant_id;

-- name: lock_counters
-- Keys arrive as parallel arrays; the join walks the primary key.
SELECT c.budget_id, c.instance, c.window_start, c.used, c.held, c.overrun
FROM counters AS c
JOIN jsonb_array_elements(%s::jsonb) AS k(r) ON c.budget_id = k.r->>0 AND c.instance = k.r->>1
WHERE c.tenant_id = %s
ORDER BY c.budget_id, c.instance FOR UPDATE OF c;

-- name: ensure_counter
INSERT INTO counters (tenant_id, budget_id, instance, window_start, used, held, overrun)
SELECT r->>0, r->>1, r->>2, 0, 0, 0, 0 FROM jsonb_array_elements(%s::jsonb) AS u(r)
ORDER BY r->>1, r->>2 ON CONFLICT DO NOTHING;

-- name: update_counter
UPDATE counters AS c SET window_start = u.w, used = u.used, held = u.held, overrun = u.overrun
FROM (SELECT (r->>0)::bigint, (r->>1)::bigint, (r->>2)::bigint, (r->>3)::bigint, r->>4, r->>5, r->>6
      FROM jsonb_array_elements(%s::jsonb) AS e(r)) AS u(w, used, held, overrun, t, b, i)
WHERE c.tenant_id = u.t AND c.budget_id = u.b AND c.instance = u.i;

-- name: all_counters
SELECT budget_id, instance, window_start, used, held, overrun FROM counters
WHERE tenant_id = %s ORDER BY budget_id, instance;

-- name: load_buckets
SELECT b.budget_id, b.instance, b.bucket_start, b.used, b.overrun
FROM rolling_buckets AS b
JOIN jsonb_array_elements(%s::jsonb) AS k(r) ON b.budget_id = k.r->>0 AND b.instance = k.r->>1
WHERE b.tenant_id = %s;

-- name: upsert_bucket
INSERT INTO rolling_buckets (tenant_id, budget_id, instance, bucket_start, used, overrun)
SELECT r->>0, r->>1, r->>2, (r->>3)::bigint, (r->>4)::bigint, (r->>5)::bigint FROM jsonb_array_elements(%s::jsonb) AS u(r)
ON CONFLICT (tenant_id, budget_id, instance, bucket_start) DO UPDATE SET used = excluded.used, overrun = excluded.overrun;

-- name: prune_buckets
DELETE FROM rolling_buckets AS r
USING (SELECT e->>0, e->>1, e->>2, (e->>3)::bigint FROM jsonb_array_elements(%s::jsonb) AS x(e)) AS u(t, b, i, floor)
WHERE r.tenant_id = u.t AND r.budget_id = u.b AND r.instance = u.i AND r.bucket_start < u.floor;

-- name: all_buckets
SELECT budget_id, instance, bucket_start, used, overrun FROM rolling_buckets WHERE tenant_id = %s;

-- name: load_counted
SELECT e.budget_id, e.instance, e.entity
FROM counted_entities AS e
JOIN (SELECT r->>0, r->>1, (r->>2)::bigint, r->>3 FROM jsonb_array_elements(%s::jsonb) AS x(r))
     AS k(budget_id, instance, window_start, entity)
  ON e.budget_id = k.budget_id AND e.instance = k.instance AND e.window_start = k.window_start
 AND e.entity = k.entity
WHERE e.tenant_id = %s;

-- name: insert_counted
INSERT INTO counted_entities (tenant_id, budget_id, instance, window_start, entity)
SELECT r->>0, r->>1, r->>2, (r->>3)::bigint, r->>4 FROM jsonb_array_elements(%s::jsonb) AS u(r)
ON CONFLICT DO NOTHING;

-- name: prune_counted
DELETE FROM counted_entities AS e
USING (SELECT x->>0, x->>1, x->>2, (x->>3)::bigint FROM jsonb_array_elements(%s::jsonb) AS y(x)) AS u(t, b, i, w)
WHERE e.tenant_id = u.t AND e.budget_id = u.b AND e.instance = u.i AND e.window_start < u.w;

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

-- name: first_holds_of_tenant
-- The tenant's live holds by lease deadline, earliest first.
SELECT reservation_id, lease_expires_at_us FROM reservations
WHERE tenant_id = %s AND status = 'held' ORDER BY lease_expires_at_us LIMIT %s;

-- name: held_reservations
SELECT reservation_id, parts FROM reservations WHERE tenant_id = %s AND status = 'held';

-- name: insert_reservation
INSERT INTO reservations (tenant_id, reservation_id, status, agent, action, task, amounts, parts,
                          lease_expires_at_us, created_at_us, resolved_at_us, result, resolve_key, was_expired)
SELECT r->>0, r->>1, r->>2, r->>3, r->>4, r->>5, r->>6, r->>7, (r->>8)::bigint, (r->>9)::bigint, (r->>10)::bigint,
       r->>11, r->>12, (r->>13)::boolean
FROM jsonb_array_elements(%s::jsonb) AS u(r);

-- name: update_reservation
UPDATE reservations AS r
SET status = u.status, lease_expires_at_us = u.lease, resolved_at_us = u.resolved, result = u.result,
    resolve_key = u.resolve_key, was_expired = u.was_expired
FROM (SELECT e->>0, (e->>1)::bigint, (e->>2)::bigint, e->>3, e->>4, (e->>5)::boolean, e->>6, e->>7
      FROM jsonb_array_elements(%s::jsonb) AS x(e)) AS u(status, lease, resolved, result, resolve_key, was_expired, t, rid)
WHERE r.tenant_id = u.t AND r.reservation_id = u.rid;

-- name: claim_new_idempotency
-- A second transaction claiming the same key waits here for the first to finish, then sees it.
INSERT INTO idempotency (tenant_id, idempotency_key, fingerprint, response, created_at_us)
SELECT %s, k, '', NULL, %s FROM unnest(%s::text[]) AS k ORDER BY k
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING idempotency_key;

-- name: claim_idempotency
SELECT idempotency_key, fingerprint, response FROM idempotency
WHERE tenant_id = %s AND idempotency_key = ANY(%s) ORDER BY idempotency_key FOR UPDATE;

-- name: withdraw_claim
DELETE FROM idempotency AS i USING (SELECT e->>0, e->>1 FROM jsonb_array_elements(%s::jsonb) AS x(e)) AS u(t, k)
WHERE i.tenant_id = u.t AND i.idempotency_key = u.k AND i.response IS NULL;

-- name: insert_idempotency
INSERT INTO idempotency (tenant_id, idempotency_key, fingerprint, response, created_at_us)
SELECT r->>0, r->>1, r->>2, r->>3, (r->>4)::bigint FROM jsonb_array_elements(%s::jsonb) AS u(r)
ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET fingerprint = excluded.fingerprint, response = excluded.response;

-- name: insert_entry
-- Entry ids follow the batch's order (WITH ORDINALITY), so the ledger reads in decision order.
INSERT INTO ledger (tenant_id, at_us, kind, reservation_id, agent, action, postings, detail)
SELECT r->>0, (r->>1)::bigint, r->>2, r->>3, r->>4, r->>5, r->>6, r->>7
FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS u(r, position)
ORDER BY position;

-- name: ledger_page
SELECT entry_id, at_us, kind, reservation_id, agent, action, postings, detail FROM ledger
WHERE tenant_id = %s AND entry_id > %s ORDER BY entry_id LIMIT %s;

-- name: insert_key
INSERT INTO api_keys (tenant_id, key_id, secret_sha256, role, agent, name, created_at_us)
VALUES (%s, %s, %s, %s, %s, %s, %s);

-- name: find_key
SELECT tenant_id, key_id, secret_sha256, role, agent, name, created_at_us, rotated_at_us, revoked_at_us
FROM api_keys WHERE key_id = %s;

-- name: list_keys
SELECT tenant_id, key_id, secret_sha256, role, agent, name, created_at_us, rotated_at_us, revoked_at_us
FROM api_keys WHERE tenant_id = %s ORDER BY created_at_us, key_id;

-- name: rotate_key
UPDATE api_keys SET secret_sha256 = %s, rotated_at_us = %s
WHERE tenant_id = %s AND key_id = %s AND revoked_at_us IS NULL RETURNING key_id;

-- name: revoke_key
UPDATE api_keys SET revoked_at_us = %s
WHERE tenant_id = %s AND key_id = %s AND revoked_at_us IS NULL RETURNING key_id;

-- name: count_admin_keys
SELECT count(*) FROM api_keys WHERE tenant_id = %s AND role = 'admin' AND revoked_at_us IS NULL;

-- name: ledger_after
-- The audit explorer, oldest first from a cursor. A NULL filter matches every entry.
SELECT entry_id, at_us, kind, reservation_id, agent, action, postings, detail FROM ledger
WHERE tenant_id = %s AND entry_id > %s
  AND (%s::text IS NULL OR agent = %s::text) AND (%s::text[] IS NULL OR agent = ANY(%s::text[]))
  AND (%s::text IS NULL OR action = %s::text) AND (%s::text IS NULL OR kind = %s::text)
  AND at_us >= %s AND at_us < %s
ORDER BY entry_id LIMIT %s;

-- name: ledger_before
-- The audit explorer, newest first from a cursor.
SELECT entry_id, at_us, kind, reservation_id, agent, action, postings, detail FROM ledger
WHERE tenant_id = %s AND entry_id < %s
  AND (%s::text IS NULL OR agent = %s::text) AND (%s::text[] IS NULL OR agent = ANY(%s::text[]))
  AND (%s::text IS NULL OR action = %s::text) AND (%s::text IS NULL OR kind = %s::text)
  AND at_us >= %s AND at_us < %s
ORDER BY entry_id DESC LIMIT %s;

-- name: ledger_recent_postings
-- Burn rates: the postings of the newest entries since a moment, newest first.
SELECT at_us, postings FROM ledger
WHERE tenant_id = %s AND at_us >= %s AND kind IN ('commit', 'late_commit', 'usage')
ORDER BY at_us DESC LIMIT %s;

-- name: count_held
SELECT count(*) FROM reservations WHERE status = 'held';
