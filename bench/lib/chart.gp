# bench/lib/chart.gp: the chart of bench/run.sh (MiB/s per client, three cases;
# 0 where a client failed or is missing).
#   gnuplot -e "datafile='...'; outfile='....png'; subtitle='...'" bench/lib/chart.gp
set terminal pngcairo size 1000,520 font "sans,10"
set output outfile
set title "reliablewriter and its peers: upload MiB/s (higher is better)\n{/*0.8 ".subtitle."}"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top right
set grid ytics
set ylabel "MiB/s (median)"
set yrange [0:*]
set xtics nomirror noenhanced
plot datafile using 2:xtic(1) title "no faults" lc rgb "#3b6ea5", \
     '' using 3 title "faults (reset per 16 MiB)" lc rgb "#d9822b", \
     '' using 4 title "WAN (20 ms, 50 MiB/s)" lc rgb "#5a9e4b"
