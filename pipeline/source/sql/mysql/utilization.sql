-- Reference utilization query (MySQL / MariaDB) returning the source contract:
--   partner_id, company_id, company_name, sku, user_id, active_from, active_to, billable
-- One row per service enrollment whose span may overlap the billing month
-- [:month_start, :month_end). MySQL has no zone-aware timestamp: the reference schema keeps
-- DATETIME values in UTC, the window is bound as UTC instants, and active_from / active_to
-- come back as DATETIME in UTC. billable is TINYINT(1) (1 = true, 0 = false, NULL = unknown).
-- A deleted company ends its users' spans at its deletion. Rows with missing ids are
-- returned too, so validation quarantines them.
SELECT
    p.partner_id AS partner_id,
    e.company_id AS company_id,
    c.name AS company_name,
    e.sku AS sku,
    e.user_id AS user_id,
    e.started_at AS active_from,
    CASE
        WHEN c.deleted_at IS NOT NULL AND (e.ended_at IS NULL OR c.deleted_at < e.ended_at)
        THEN c.deleted_at
        ELSE e.ended_at
    END AS active_to,
    u.is_billable AS billable
FROM service_enrollments AS e
LEFT JOIN companies AS c ON c.company_id = e.company_id
LEFT JOIN partners AS p ON p.partner_id = c.partner_id
LEFT JOIN users AS u ON u.user_id = e.user_id
WHERE (e.started_at IS NULL OR e.started_at < :month_end)
  AND (e.ended_at IS NULL OR e.ended_at > :month_start)
  AND (c.deleted_at IS NULL OR c.deleted_at > :month_start)
