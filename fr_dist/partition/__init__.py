"""Which blocks each stage gets: uniform or explicit cuts, or cuts chosen from a measured profile."""

from fr_dist.partition.cuts import (fr_stage_cost, pipeline_cuts, predicted_stage_costs, profiled_cuts,
                                    stage_cuts)

__all__ = ["fr_stage_cost", "pipeline_cuts", "predicted_stage_costs", "profiled_cuts", "stage_cuts"]
