-- The HMAC secret of a webhook-triggered workflow (NULL for other triggers,
-- or until RotateWebhookSecret makes one). Never returned by a read.
ALTER TABLE scheduler.workflows ADD COLUMN webhook_secret text;
