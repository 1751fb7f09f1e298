-- Reference partners query: each partner's display name, for the titles of its statements.
-- Contract: partner_id (text), partner_name (text). A partner it does not return (or returns
-- with an empty name) is titled with its id.
SELECT
    partner_id,
    name AS partner_name
FROM partners
ORDER BY partner_id
