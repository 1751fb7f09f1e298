"""gradient-billing-sync: monthly MSP billing from the product database into Gradient MSP."""
