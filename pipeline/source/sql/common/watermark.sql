-- Reference source watermark: a cheap signal that a billing month's source data changed,
-- compared by the missed/late months sensor with the one recorded when the month was counted
-- (no month aggregate in a sensor tick). One row, any columns; every value is compared.
-- Receives :month_start and :month_end (the month's UTC window, as UTILIZATION_SQL).
-- Enrollments: how many touch the month (started_at / ended_at are indexed), the newest id
-- (primary key: an insert anywhere) and the newest update; companies, users and partners:
-- small tables, whole (a rename, a deletion, a billable flag or an ownership change).
SELECT
    (SELECT COUNT(*) FROM service_enrollments
      WHERE (started_at IS NULL OR started_at < :month_end)
        AND (ended_at IS NULL OR ended_at > :month_start)) AS enrollments_in_month,
    (SELECT MAX(enrollment_id) FROM service_enrollments) AS newest_enrollment,
    (SELECT MAX(updated_at) FROM service_enrollments) AS enrollments_updated,
    (SELECT COUNT(*) FROM companies) AS companies,
    (SELECT MAX(updated_at) FROM companies) AS companies_updated,
    (SELECT MAX(deleted_at) FROM companies) AS companies_deleted,
    (SELECT SUM(CASE WHEN is_billable = TRUE THEN 1 ELSE 0 END) FROM users) AS billable_users,
    (SELECT COUNT(*) FROM partners) AS partners
