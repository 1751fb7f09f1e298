-- Reference partner connections query: what the product's Connect / Disconnect buttons wrote.
-- Contract: partner_id (text), encrypted_api_key (text, Fernet token), state (text:
-- 'connected' or 'disconnected'), connected_at, disconnected_at, updated_at (timestamps).
SELECT
    partner_id,
    encrypted_api_key,
    state,
    connected_at,
    disconnected_at,
    updated_at
FROM gradient_connections
ORDER BY partner_id
