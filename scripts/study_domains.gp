# study_domains.gp - held-out loss per domain (and the mean) for every variant, and the same as
# the difference to the first variant (below zero = better than it).
load here.'/study_common.gp'
set output dir.'/domains.png'
f = dir.'/plot/domains.dat'
ntp = (ntask > 0) ? 3 : 2
set terminal pngcairo noenhanced font "DejaVu Sans,12" linewidth 1.3 size (ntp == 3 ? 1800 : 1500),600
set multiplot layout 1,ntp title sprintf("Study %s: per-domain results (budget %s)", study, budget) font ",14"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key below horizontal
set xtics nomirror
stats f using 2:2 nooutput
lo = STATS_min_x; hi = STATS_max_x
do for [i=3:nvar+1] { stats f using i nooutput; lo = (STATS_min < lo) ? STATS_min : lo; hi = (STATS_max > hi) ? STATS_max : hi }
set yrange [lo - 0.15 * (hi - lo) - 0.02 : hi + 0.25 * (hi - lo) + 0.02]
set ylabel "held-out loss (nats)"
set title "validation loss per domain"
plot for [i=2:nvar+1] f using i:xtic(1) lc rgb col(i-1) title word(names, i-1)
set autoscale y
set ylabel sprintf("loss minus %s (nats)", word(names, 1))
set title sprintf("difference to %s (below 0 = better)", word(names, 1))
plot for [i=3:nvar+1] f using (column(i) - column(2)):xtic(1) lc rgb col(i-1) title word(names, i-1)
if (ntask > 0) {
  set title "exact-match task accuracy"
  set ylabel "accuracy (%)"
  set yrange [0:5<*]
  amax = 0
  do for [i=2:nvar+1] { stats dir.'/plot/acc.dat' using i nooutput; amax = (STATS_max > amax) ? STATS_max : amax }
  if (amax == 0) { set label 1 "every accuracy is 0%" at graph 0.5, graph 0.5 center font ",14" }
  plot for [i=2:nvar+1] dir.'/plot/acc.dat' using i:xtic(1) lc rgb col(i-1) title word(names, i-1)
}
unset multiplot
