-- Reference companies query: every live company of every partner, with or without users.
-- Each becomes a Gradient account of its partner. Contract: partner_id, company_id,
-- company_name (text). Deleted companies are left out (Gradient has no account deletion;
-- their counts drop to 0 through the ledger).
SELECT
    c.partner_id AS partner_id,
    c.company_id AS company_id,
    c.name AS company_name
FROM companies AS c
JOIN partners AS p ON p.partner_id = c.partner_id
WHERE c.deleted_at IS NULL
  AND c.name IS NOT NULL
  AND TRIM(c.name) <> ''
ORDER BY c.partner_id, c.company_id
