-- Reference services query: the vendor's services (SKUs) and their Gradient category.
-- Contract: sku, name, description, category, subcategory (all text).
SELECT
    sku,
    name,
    description,
    gradient_category AS category,
    gradient_subcategory AS subcategory
FROM services
ORDER BY sku
