-- Reference sync requests query: the product's "Update Counts" / "Sync Company Accounts"
-- buttons. Contract: request_id (integer, increasing), partner_id (text), kind (text:
-- 'update_counts' or 'sync_accounts'), requested_at (timestamp). Receives :after_id.
SELECT request_id, partner_id, kind, requested_at
FROM gradient_sync_requests
WHERE request_id > :after_id
ORDER BY request_id
