"""The data-scaling sweep tool: plan, launch, status, collect, fit, plot, report (issue 12)."""
